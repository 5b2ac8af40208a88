"""How each speculative round proposes: draft-length policies, proposal sources, and the one
table they are registered in.

    base      DraftPolicy (a length rule), Proposer (a source of tokens to verify), StepStats
    table     the registry, the spec language (`svip:0.3+lookup:4:8`), labels and help
    rules     none, constant, heuristic, svip, pmin, adaedl
    cost      svip-cost: SVIP priced with this machine's calibrated costs
    specdec   specdec, specdec-cost: SpecDec++'s rule on the head learnt at calibration
    lookup    prompt lookup, a proposal source (a chain, or a tree of every occurrence)
    cape      CaPE, an expander: the draft's chain widened by its top-k alternatives
    auto      `calibrated`: the calibrated choice per sampling temperature, fixed
    live      `auto`: the fastest choice each round, by costs and acceptance learnt live
    strategy  Strategy (policy + proposer), PerTemperature, parse_policy: what a generation runs
"""

# Importing the modules registers their entries, in this order (the help lists them so).
from svip_local.policies import rules  # noqa: F401, I001 (registration order)
from svip_local.policies import cost, specdec, lookup, cape, auto, live  # noqa: F401
from svip_local.policies.base import (
    DraftPolicy,
    Expander,
    Option,
    Proposer,
    StepStats,
    Verdict,
    entropy_and_top_prob,
    entropy_scratch,
)
from svip_local.policies.cost import CostAwareSvip
from svip_local.policies.cape import Cape, CostAwareCape
from svip_local.policies.lookup import LookupTree, PromptLookup
from svip_local.policies.rules import AdaEdl, Constant, Heuristic, NoDraft, PMin, Svip
from svip_local.policies.specdec import CostAwareSpecDec, SpecDec
from svip_local.policies.strategy import PerTemperature, Plan, Strategy, as_plan, parse_policy
from svip_local.policies.table import (
    PolicyContext,
    PolicyEntry,
    build_part,
    check_spec,
    known_specs,
    label,
    policy_help,
)
from svip_local.policies.table import entries as policy_entries

__all__ = [
    "AdaEdl", "Cape", "Constant", "CostAwareCape", "CostAwareSpecDec", "CostAwareSvip",
    "DraftPolicy", "Expander", "Heuristic", "Option", "SpecDec",
    "LookupTree", "NoDraft", "PMin", "PerTemperature", "Plan", "PolicyContext",
    "PolicyEntry", "PromptLookup", "Proposer",
    "StepStats", "Strategy", "Svip", "Verdict", "as_plan", "build_part", "check_spec",
    "entropy_and_top_prob", "entropy_scratch", "known_specs", "label", "parse_policy",
    "policy_entries", "policy_help",
]
