"""Nash learning from general preferences: the update rules, one family per module (nash_md,
mirror_prox, inpo, mnpo, egpo, spo), on the tabular preference bandit
(`alignlab.lab.preference_bandit`) and, through the pure losses of `alignlab.losses.nash`, on a
language-model policy. `alignlab.nash.run` holds the table of methods and the bandit loop;
`alignlab.nash.baselines` the reward-based methods they are compared with."""
