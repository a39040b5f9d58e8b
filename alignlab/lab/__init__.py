"""The lab: controlled tasks with a known gold reward and simulated annotators, so that what a
method learns from (simulated) human feedback can be measured against the truth. See docs/lab.md."""

from alignlab.lab.annotators import AnnotatorPopulation, BradleyTerryAnnotator, make_preference_pairs
from alignlab.lab.sentiment import SentimentTask

__all__ = ["AnnotatorPopulation", "BradleyTerryAnnotator", "SentimentTask", "make_preference_pairs"]
