"""Resolved generative retrieval (Gryphon §4.1.2): an extra token makes every SID unique (TIGER-style), with smaller
codebooks (2 × 1024), so each generated SID names exactly one item."""
from harness.api import register
from harness.engines.generative import GenerativeRetrieval


@register
class ResolvedGR(GenerativeRetrieval):
    name = "gr-resolved"
    paper = "Resolved GR as defined in Gryphon (item-level scoring for generative retrieval), §4.1.2"
