"""What a random ranking scores, for tests that check a trained model beats it."""

from math import comb


def chance_average_precision(gallery: int, relevant: int) -> float:
    """Expected AP (x100) of a uniformly random ranking of ``gallery`` items, ``relevant`` of them right.

    AP = (1/R) sum_k k / rank_k; the k-th right item sits at rank r with probability
    C(r-1, k-1) C(N-r, R-k) / C(N, R).
    """
    n, r_total = gallery, relevant
    total = sum(k / r * comb(r - 1, k - 1) * comb(n - r, r_total - k)
                for k in range(1, r_total + 1) for r in range(k, n - r_total + k + 1))
    return 100 * total / (r_total * comb(n, r_total))
