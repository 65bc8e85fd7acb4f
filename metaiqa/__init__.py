"""metaiqa: no-reference image quality assessment with a meta-learned quality prior."""

__version__ = "0.1.0"
