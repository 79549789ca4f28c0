"""Names that cross the Grid, shared by the server and the clients (one home for each)."""

EXPERIMENT = "experiment"
"""config['experiment']: the experiment config as JSON, in every message the server sends."""
NUM_PARTITIONS = "num-partitions"
"""A node's config: how many partitions its federation was started for (Flower's own key)."""
