"""The relabel-retrain loop: export stored traffic as training rows, label it with a judge."""
