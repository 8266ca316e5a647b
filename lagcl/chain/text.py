"""The chain as text: the terminal summary's, the report's and `lagcl compare`'s lines for the levels control ->
+ data -> + rank -> + rerank (lagcl/chain/rule.py)."""

from __future__ import annotations

from lagcl.chain.rule import gain
from lagcl.meta import TEST_NDCG, TEST_RECALL, VALID_RECALL, metric_key
from lagcl.stats import format_p, mark

# the chain table's metric columns: validation and test Recall@20, test NDCG@20, cold and warm test Recall@20
COLUMNS = (VALID_RECALL, TEST_RECALL, TEST_NDCG, metric_key("test", segment="cold"), metric_key("test", segment="warm"))


# how the chain names the rank level's objective (`rank.reading`)
READINGS = {"paper": "paper (eq. 7-12 as docs/design.md reads them)",
            "official": "official (the authors' released code's objective, docs/design.md 15)"}


def format_chain(levels: list[dict], final: dict | None = None) -> list[str]:
    """The chain as text lines (terminal summary, report, compare): each level's validation and test
    Recall/NDCG@20 with the change against the control, cold/warm test Recall@20, the paired test of the test
    Recall@20 change (95% interval over users, p-value, the paper's marks), kept or not and why."""
    control = next((r for r in levels if r["level"] == "control"), None)

    def cell(r: dict, key: str) -> str:
        v = r.get(key)
        if v is None:
            return "-"
        if key.startswith("valid") and r.get("valid_scope", "all users") != "all users":
            return f"{v:.4f} (h)"  # another set of users (the reranker's held-out ones): no change to show
        base = control.get(key) if control is not None and r is not control else None
        return f"{v:.4f}" + (f" ({gain(v, base):+.1%}){mark(r.get(key + '_p') or float('nan'))}" if base else "")

    def cells(r: dict) -> str:
        return " ".join(f"{cell(r, key):>19}" for key in COLUMNS)

    def interval(r: dict) -> str:
        diff, lo, hi, p = (r.get(metric_key("test", stat=q)) for q in ("diff", "lo", "hi", "p"))
        if p is None:
            return "-"
        return f"{diff:+.4f} [{lo:+.4f}, {hi:+.4f}] p={format_p(p)}"

    lines = [f"  {'level':<8} {'variant':<26} {'kept':<4} {'valid R@20':>19} {'test R@20':>19} {'test N@20':>19} "
             f"{'cold test R@20':>19} {'warm test R@20':>19}  {'test R@20 - control [95% CI] p':<36}  why"]
    for r in levels:
        name = r["level"] if r["level"] == "control" else "+ " + r["level"]
        lines.append(f"  {name:<8} {str(r['variant'])[:26]:<26} {'yes' if r['kept'] else 'no':<4} "
                     f"{cells(r)}  {interval(r):<36}  {r['reason']}")
    for r in levels:
        if r.get("groups"):
            lines.append(f"  + {r['level']} groups: {r['groups']}")
        if r.get("reading"):
            lines.append(f"  + {r['level']} reading: {READINGS.get(r['reading'], r['reading'])}")
    if any(r.get("valid_scope", "all users") != "all users" for r in levels):
        lines.append("  (h): validation over the reranker's held-out users only, not comparable with the rows above")
    if any(r.get(metric_key("test", stat="p")) is not None for r in levels):
        lines.append("  * p < 0.05, ** p < 0.01: paired sign-flip permutation test over users against the control "
                     "(one seed; lagcl/stats.py)")
    if final is not None:
        lines.append(f"  {'final':<8} {str(final.get('variant'))[:26]:<26} {'':<4} {cells(final)}  "
                     f"{interval(final):<36}")
    return lines
