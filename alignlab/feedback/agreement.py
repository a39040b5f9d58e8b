"""Inter-annotator agreement on nominal labels.

Cohen's kappa (Cohen 1960) for two annotators on the items both labeled:
    kappa = (p_o - p_e) / (1 - p_e),   p_e = sum_c p1(c) p2(c)
with p_o the share of items where they agree and p_k(c) annotator k's share of label c; for a
team, the mean over annotator pairs with at least `min_common` shared items.

Krippendorff's alpha for nominal data (Krippendorff 2011, "Computing Krippendorff's
Alpha-Reliability"), any number of annotators, missing labels allowed:
    alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k
where o_ck = sum over items u with m_u >= 2 labels of (number of ordered c-k label pairs in u) /
(m_u - 1), n_c = sum_k o_ck and n = sum_c n_c (only pairable labels count).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Kappa of two equally long label lists; None when chance agreement is 1 (one label only)."""
    if len(first) != len(second) or not first:
        raise ValueError(f"cohen_kappa needs two non-empty lists of the same length, got {len(first)}, {len(second)}")
    n = len(first)
    p_o = sum(a == b for a, b in zip(first, second)) / n
    c1, c2 = Counter(first), Counter(second)
    p_e = sum(c1[c] * c2[c] for c in c1) / n**2
    return None if p_e == 1 else (p_o - p_e) / (1 - p_e)


def mean_pairwise_kappa(labels: dict[int, dict[str, str]], min_common: int = 2) -> tuple[float | None, int]:
    """labels: {item: {annotator: label}} -> (mean kappa over annotator pairs, number of pairs)."""
    by_annotator: dict[str, dict[int, str]] = defaultdict(dict)
    for item, votes in labels.items():
        for annotator, label in votes.items():
            by_annotator[annotator][item] = label
    kappas = []
    for a, b in itertools.combinations(sorted(by_annotator), 2):
        common = sorted(set(by_annotator[a]) & set(by_annotator[b]))
        if len(common) >= min_common:
            k = cohen_kappa([by_annotator[a][i] for i in common], [by_annotator[b][i] for i in common])
            if k is not None:
                kappas.append(k)
    return (sum(kappas) / len(kappas) if kappas else None), len(kappas)


def krippendorff_alpha(labels: dict[int, dict[str, str]]) -> float | None:
    """Nominal alpha of {item: {annotator: label}}; None with no item labeled twice or one label only."""
    o: Counter = Counter()
    for votes in labels.values():
        values = list(votes.values())
        m = len(values)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            o[values[i], values[j]] += 1 / (m - 1)
    n_c: Counter = Counter()
    for (c, _k), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if n == 0 or expected == 0:
        return None
    observed = sum(w for (c, k), w in o.items() if c != k)
    return 1 - (n - 1) * observed / expected
