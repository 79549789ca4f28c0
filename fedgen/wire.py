"""Names that cross the Grid, shared by the server and the clients: one home for each.

Message types are Flower's ('train', 'evaluate', 'query') plus OSCAR's 'train.encode', the diffusion task's
'train.diffusion', FedPhD's 'train.fedphd', LDMLR's 'train.ldmlr', FedDDPM's 'train.dpdiffusion' and GPT-FL's
'query.labels'. Config keys travel in a
message's ConfigRecord 'config'; metric keys in a reply's MetricRecord 'metrics'.
"""

from flwr.app import MessageType

ENCODE = f"{MessageType.TRAIN}.encode"
"""OSCAR's upload of category encodings."""
DIFFUSION_TRAIN = f"{MessageType.TRAIN}.diffusion"
"""Local training of the image diffusion model (task=diffusion)."""
LABELS = f"{MessageType.QUERY}.labels"
"""GPT-FL's plain label collection: the client's label names."""
FEDPHD_TRAIN = f"{MessageType.TRAIN}.fedphd"
"""FedPhD's local training: the edge's U-Net, possibly pruned."""
LDMLR_TRAIN = f"{MessageType.TRAIN}.ldmlr"
"""Local training of a classifier and its feature diffusion model (task=ldmlr)."""
DPDIFFUSION_TRAIN = f"{MessageType.TRAIN}.dpdiffusion"
"""FedDDPM's private training of the feature denoiser (dp-promise's two phases)."""

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
PRUNING_PLAN = "pruning-plan"
"""FedPhD: the pruned U-Net's plan (torch-pruning's history as JSON; absent: unpruned)."""
SPARSE_LAMBDA = "sparse-lambda"
"""FedPhD's sparse training: the weight of its norm term (absent: none)."""
IBLT_SPEC = "iblt-spec"
"""GPT-FL's private label collection: the IBLT layout (capacity, prime, key bytes, chunk bytes, seed)."""
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
PSEUDO_FEATURES, PSEUDO_LABELS = "features", "labels"
"""FedDDPM with upload=features: the pseudo-features a client sampled from its private model, and their labels."""
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
LABEL_NAMES = "label-names"
"""A 'query.labels' reply's ConfigRecord key: the names of the classes the client holds."""
LABEL_HISTOGRAM = "label-histogram"
"""A query fact: training examples per class."""
TRAIN_LOSS = "train-loss"
DP_EPSILON, DP_EPSILON_OPACUS, DP_SIGMA = "dp-epsilon", "dp-epsilon-opacus", "dp-sigma"
"""A private client's spending so far (dp-promise's GDP accountant, and phase II alone by opacus' RDP accountant) and
this round's noise multiplier."""
EVAL_LOSS, EVAL_ACC = "eval-loss", "eval-acc"
DOMAIN_CORRECT, DOMAIN_COUNT = "domain-correct", "domain-count"
