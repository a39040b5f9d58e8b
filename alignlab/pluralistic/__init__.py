"""Pluralistic and personalized reward models and policies (issue 21): one method per file.

    pairs.py    features of responses, labelled pairs as tensors, the single Bradley-Terry baseline
    policy.py   exact KL-regularized policies on a fixed candidate pool
    maxmin.py   MaxMin-RLHF: EM mixture of Bradley-Terry models, the max-min policy
    vpl.py      Variational Preference Learning: reward conditioned on an inferred user latent z
    prlhf.py    P-RLHF: user embeddings (generic + individual) and a personalized reward

The models are small heads on fixed features of each response (`pairs.task_features`), so that
they train in seconds on CPU; docs/pluralistic.md has the equations and measured results. The
losses are pure functions in alignlab.losses.pluralistic.
"""
