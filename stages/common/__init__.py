"""Machinery shared by every stage: params, outputs, seeding, training, metrics, plots."""
