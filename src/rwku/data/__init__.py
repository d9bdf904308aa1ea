"""RWKU benchmark data: typed records, and loading them from a local copy or the hub.

Typical use::

    from rwku.data import open_data

    data = open_data()  # --data, else $RWKU_DATA, else the HuggingFace hub
    sk = data.load_target("Stephen King")
    sk.forget["level1"][0].query, sk.counts(), sk.fingerprint()
"""

from rwku.data.loader import (
    CORPUS_KINDS,
    ENV_VAR,
    HUB_CONFIGS,
    HUB_CORPUS_CONFIGS,
    HUB_REPO,
    SPLITS,
    HubData,
    LocalJoinedData,
    LocalPerTargetData,
    RwkuData,
    clear_cache,
    open_data,
    target_table,
)
from rwku.data.records import (
    COUNT_KEYS,
    FORGET_LEVELS,
    NEIGHBOR_LEVELS,
    BbhItem,
    FluencyItem,
    MiaText,
    MmluItem,
    Probe,
    Target,
    TargetData,
    TriviaItem,
    TruthfulItem,
)

__all__ = [
    "COUNT_KEYS",
    "CORPUS_KINDS",
    "ENV_VAR",
    "FORGET_LEVELS",
    "HUB_CONFIGS",
    "HUB_CORPUS_CONFIGS",
    "HUB_REPO",
    "NEIGHBOR_LEVELS",
    "SPLITS",
    "BbhItem",
    "FluencyItem",
    "HubData",
    "LocalJoinedData",
    "LocalPerTargetData",
    "MiaText",
    "MmluItem",
    "Probe",
    "RwkuData",
    "Target",
    "TargetData",
    "TriviaItem",
    "TruthfulItem",
    "clear_cache",
    "open_data",
    "target_table",
]
