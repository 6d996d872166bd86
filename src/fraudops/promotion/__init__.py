"""Promotion: registering challengers, the champion/challenger rule, rollback, the monitoring reference."""
