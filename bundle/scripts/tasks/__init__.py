"""The verbs: inference, evaluation, reports, the demo."""
