"""Names that cross the Grid, shared by the server and the clients: one home for each.

Message types are Flower's ('train', 'evaluate', 'query') plus the tasks' 'train.diffusion' and 'train.ldmlr'.
Config keys travel in a message's ConfigRecord 'config'; metric keys in a reply's MetricRecord 'metrics'. A method's
own names (its message types and keys) live in its module under strategies/, beside its config section.
"""

from flwr.app import MessageType

DIFFUSION_TRAIN = f"{MessageType.TRAIN}.diffusion"
"""Local training of the image diffusion model (task=diffusion)."""
LDMLR_TRAIN = f"{MessageType.TRAIN}.ldmlr"
"""Local training of a classifier and its feature diffusion model (task=ldmlr)."""

# --- config keys (server -> client) -------------------------------------------------------------------------------
EXPERIMENT = "experiment"
"""The experiment config as JSON, in every message the server sends."""
SERVER_ROUND = "server-round"
CLIENT_STATE_DIR = "client-state-dir"
"""Where a simulated client keeps state between rounds (a SuperNode's own 'state-dir' node config comes first)."""
QUERY_FACTS = "facts"
"""The partition query: the client facts, beyond its partition id and example counts, the strategy uses."""
STATE_ROUND = "state-round"
"""The round of the client's last update the server aggregated: the client state it must continue from."""
PROXIMAL_MU = "proximal-mu"
"""Flower's FedProx key."""
FEDDYN_ALPHA = "feddyn-alpha"
FEDDYN_MEAN_EXAMPLES = "feddyn-mean-examples"
"""Sent when FedDyn scales alpha by each client's data share: the mean training-set size over the federation."""
MOON_MU, MOON_TAU = "moon-mu", "moon-tau"
SECURE_ROLE = "secure-role"
"""Under SecAgg+: what the client computes and masks ('train', or a registered method's secure role)."""
SECURE_KEYS = "secure-keys"
"""Under SecAgg+ with 'train': the model's array keys, in the order of the arrays the legacy FitIns carries."""
MODEL_NAME = "model-name"
"""The architecture of the model a message carries, where clients train different ones (FedDF); absent: the
experiment's model.name."""

# --- array keys ---------------------------------------------------------------------------------------------------
CONTEXT_ARRAYS = "context"
"""A training message's ArrayRecord of what the client uses but does not train (FedDDPM's frozen encoder): no reply
carries it back."""
SCAFFOLD_CONTROL = "scaffold-control."
"""Prefix of SCAFFOLD's control variates in the model's ArrayRecord: the server control c going down, a client's
change dc_i coming back (one ArrayRecord per message, as Flower's aggregation requires)."""

# --- node config (Flower's own keys) ------------------------------------------------------------------------------
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

# --- metric keys (client -> server) -------------------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"
"""Flower's weighting key: a train reply's training examples, an evaluate reply's test examples."""
NUM_TEST_EXAMPLES = "num-test-examples"
"""The query reply: the size of the client's local test split (what an evaluate reply may report)."""
LABEL_HISTOGRAM = "label-histogram"
"""A query fact: training examples per class."""
TRAIN_LOSS = "train-loss"
DP_EPSILON, DP_EPSILON_OPACUS, DP_SIGMA = "dp-epsilon", "dp-epsilon-opacus", "dp-sigma"
"""A private client's spending so far (dp-promise's GDP accountant, and phase II alone by opacus' RDP accountant) and
this round's noise multiplier."""
EVAL_LOSS, EVAL_ACC = "eval-loss", "eval-acc"
DOMAIN_CORRECT, DOMAIN_COUNT = "domain-correct", "domain-count"
