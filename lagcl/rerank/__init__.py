"""Rerank level (eq. 13-21): dataset builder, training, inference, fusion."""
