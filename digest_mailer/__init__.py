"""digest-mailer: trending ML papers, filtered per subscriber, mailed as one digest."""

__version__ = "0.1.0"
