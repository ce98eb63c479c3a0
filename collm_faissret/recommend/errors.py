"""The one error type of a recommendation request that cannot be served."""


class RecommendError(ValueError):
    """Bad input to ``Recommender`` / ``collm-recommend`` (an unknown user, a title that matches no
    item, a run directory without its files, ...); the message is one line naming what to change."""
