"""The lab: controlled tasks with a known gold reward and simulated annotators, so that what a
method learns from (simulated) human feedback can be measured against the truth. See docs/lab.md.

Importing the lab registers its tasks' gold rewards as the `lab:<task>` reward family
(alignlab.rewards.spec.register_reward_family); the experiments that use these components live
in alignlab.experiments."""

from alignlab.lab.annotators import AnnotatorPopulation, BradleyTerryAnnotator, make_preference_pairs
from alignlab.lab.sentiment import SentimentTask
from alignlab.lab.tasks import LAB_TASKS, get_task, lab_reward_source
from alignlab.rewards.spec import register_reward_family

register_reward_family("lab", lab_reward_source)

__all__ = ["LAB_TASKS", "AnnotatorPopulation", "BradleyTerryAnnotator", "SentimentTask", "get_task",
           "make_preference_pairs"]
