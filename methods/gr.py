"""Vanilla generative retrieval (Gryphon §4.1.2): residual k-means SIDs without a de-duplication token.

Colliding items share one SID; the generator decodes SIDs and each generated SID expands to its whole collision
group in beam order, accumulating items until the candidate budget. Items of one group are indistinguishable to the
model, so they share the SID's beam score (and count as ties in evaluation).
"""
from harness.api import register
from harness.engines.generative import GenerativeRetrieval


@register
class VanillaGR(GenerativeRetrieval):
    name = "gr"
    paper = "Vanilla GR as defined in Gryphon (item-level scoring for generative retrieval), §4.1.2"
