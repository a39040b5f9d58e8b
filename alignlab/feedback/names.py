"""Names the command line offers before the app's dependencies are imported."""

DEFAULT_URL = "sqlite:///feedback.db"
TASKS = ("pairwise", "ranking", "rating", "thumbs")
STRATEGIES = ("uniform", "uncertainty", "thompson")
