"""What calibration knows about this machine and pair, below the policies that use it.

    costs       CostModel: seconds per target verification, draft step and per-row work
    machine     Fingerprint (CPU, GPU, offload, threads) and PairIdentity (the files)
    acceptance  AcceptanceMap: draft entropy -> chance the target accepts the token
    head        AcceptanceHead: the draft's hidden state -> that chance (SpecDec++), trained
    record      Calibration and TemperatureChoice: what `svip-local calibrate` chose
    live        LiveModel: the running estimates the live `auto` learns round by round
    store       one JSON file per (pair, machine): load, save; the live estimates beside it

Nothing here runs a model: measuring is `svip_local.bench`'s job, and so is the search. The
engine reads a stored calibration through `store.load` when a policy (`auto`, `calibrated`,
`svip-cost`) asks for it, and never otherwise.
"""

from svip_local.calibration.acceptance import AcceptanceMap
from svip_local.calibration.costs import CostModel, nondecreasing
from svip_local.calibration.head import AcceptanceHead
from svip_local.calibration.machine import Fingerprint, PairIdentity, fingerprint
from svip_local.calibration.record import Calibration, TemperatureChoice, temperature_label

__all__ = ["AcceptanceHead", "AcceptanceMap", "Calibration", "CostModel", "Fingerprint",
           "PairIdentity", "TemperatureChoice", "fingerprint", "nondecreasing", "temperature_label"]
