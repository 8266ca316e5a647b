"""LAGCL4Rec: LLM-activated graph contrastive learning for recommendation."""

__version__ = "0.1.0"
