"""Names the CLI needs before anything heavy is imported (`--help` stays fast)."""

CONFIG_ENV = "DIGEST_MAILER_CONFIG"
DEFAULT_CONFIG = "digest-mailer.toml"
SOURCE_KINDS = ("huggingface", "huggingface-page", "arxiv")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
