"""Side-effect-free code shared by training, the stream workers and the server.

The ranking features are defined once, here: :mod:`.spec` (version, constants, layout),
:mod:`.state` (the state known at time t and its update code), :mod:`.rows` (features from that
state), :mod:`.offline` (point-in-time training rows by replaying a log through the same code).
``online_state`` keeps the same state online in Redis.
"""

from models.features.batch import FeatureBatch, FeatureLayout
from models.features.offline import Replay, Request, build_rows, context_at, replay_state
from models.features.rows import RequestContext, feature_batch
from models.features.spec import (
    FEATURE_SPEC_VERSION,
    SUPPORTED_FEATURE_SPECS,
    UnsupportedFeatureSpec,
    check_feature_spec,
    check_layout,
    feature_layout,
)
from models.features.state import (
    EventBatch,
    InMemoryStore,
    ItemStates,
    ItemStatic,
    StaticRows,
    UserStates,
    apply_user_events,
    item_deltas,
)

__all__ = [
    "FEATURE_SPEC_VERSION", "SUPPORTED_FEATURE_SPECS", "EventBatch", "FeatureBatch", "FeatureLayout",
    "InMemoryStore", "ItemStates", "ItemStatic", "Replay", "Request", "RequestContext", "StaticRows",
    "UnsupportedFeatureSpec", "UserStates", "apply_user_events", "build_rows", "check_feature_spec",
    "check_layout", "context_at", "feature_batch", "feature_layout", "item_deltas", "replay_state",
]
