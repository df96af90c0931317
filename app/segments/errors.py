from app.core.problems import ValidationFailed


class NotStatic(ValidationFailed):
    """Members are listed for static segments only; rule segments compute theirs."""
