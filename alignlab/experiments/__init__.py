"""The lab's experiments (`alignlab lab <experiment>`, `alignlab demo`): each driver composes the
lab's components (alignlab.lab: tasks, gold rewards, annotators) with the trainers and measures
the result. Drivers do not import each other; what they share is in `common` (data settings,
sampling, response files) and `proxies` (proxy reward models trained on simulated labels)."""
