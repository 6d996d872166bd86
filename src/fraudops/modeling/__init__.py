"""Modeling: the model kinds behind one protocol, leak-free splits, training, metrics and charts."""
