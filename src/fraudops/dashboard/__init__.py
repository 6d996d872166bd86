"""The dashboard: executions, champion history, monitoring over time and the analysts' alert queue."""
