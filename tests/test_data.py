import pickle

import numpy as np
import pytest
from PIL import Image

from fedgen.config import DataConfig, PartitionConfig
from fedgen.data import load_federation
from fedgen.data.digits import CLASS_NAMES, DOMAIN_NAMES, load_digits_domains
from fedgen.data.partition import longtail_indices, partition_indices, split_train_test


@pytest.fixture(scope="module")
def digits():
    return load_digits_domains(0.15, 0.15, split_seed=0)


def test_digits_domains_splits_are_disjoint_and_complete(digits):
    n_base = 1797
    sizes = {k: len(v) // len(DOMAIN_NAMES) for k, v in digits.items()}
    assert sum(sizes.values()) == n_base
    for split in digits.values():
        assert split.images.shape[1:] == (32, 32, 3) and split.images.dtype == np.uint8
        assert set(np.unique(split.domains)) == set(range(len(DOMAIN_NAMES)))
        assert set(np.unique(split.labels)) == set(range(len(CLASS_NAMES)))
    # No source digit leaks: the plain renderings of the splits share no image.
    plain = {k: {v.images[i].tobytes() for i in np.flatnonzero(v.domains == 0)} for k, v in digits.items()}
    assert not plain["pool"] & plain["test"] and not plain["pool"] & plain["public"]


def test_domains_look_different(digits):
    pool = digits["pool"]
    means = [pool.images[pool.domains == d].mean() for d in range(len(DOMAIN_NAMES))]
    assert means[1] > 2 * means[0]  # inverted is mostly white
    coloured = pool.images[pool.domains == 2].astype(int)
    assert np.abs(coloured[..., 0] - coloured[..., 1]).mean() > 10  # not grey
    assert len({round(m) for m in means}) >= 4


def _labels_domains(n=2000, classes=10, domains=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, n), rng.integers(0, domains, n)


def _heterogeneity(parts, labels, classes=10):
    dists = np.stack([np.bincount(labels[p], minlength=classes) / len(p) for p in parts])
    return np.abs(dists - dists.mean(0)).sum(1).mean()


def test_iid_partition_is_even_and_disjoint():
    labels, domains = _labels_domains()
    parts = partition_indices(labels, domains, PartitionConfig(kind="iid"), 8, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(labels)
    assert len(np.unique(np.concatenate(parts))) == len(labels)


def test_partitions_are_computed_only_for_the_clients_asked_for():
    from fedgen.data.partition import LazyPartitions

    class Counting:
        def __init__(self):
            self.asked = []

        def load_partition(self, k):
            self.asked.append(k)
            return {"idx": [k]}

    inner = Counting()
    parts = LazyPartitions(inner, 5000)
    assert len(parts) == 5000 and inner.asked == [0]  # partition 0 at once, to fail early on impossible settings
    assert parts[4321].tolist() == [4321] and parts[4321].tolist() == [4321] and inner.asked == [0, 4321]
    with pytest.raises(IndexError):
        parts[5000]


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels, domains = _labels_domains()
    skewed = partition_indices(labels, domains, PartitionConfig(kind="dirichlet", alpha=0.1), 8, seed=0)
    mild = partition_indices(labels, domains, PartitionConfig(kind="dirichlet", alpha=100.0), 8, seed=0)
    assert _heterogeneity(skewed, labels) > 3 * _heterogeneity(mild, labels)
    assert min(len(p) for p in skewed) >= 10


def test_classes_per_client():
    labels, domains = _labels_domains()
    parts = partition_indices(labels, domains, PartitionConfig(kind="classes", classes_per_client=2), 5, seed=0)
    assert all(len(np.unique(labels[p])) == 2 for p in parts)
    with pytest.raises(ValueError, match="classes_per_client=11 exceeds the 10 classes"):
        partition_indices(labels, domains, PartitionConfig(kind="classes", classes_per_client=11), 5, seed=0)


def test_one_domain_per_client_in_domain_order():
    labels, domains = _labels_domains(domains=4)
    parts = partition_indices(labels, domains, PartitionConfig(kind="domain"), 4, seed=0)
    assert [set(domains[p]) for p in parts] == [{0}, {1}, {2}, {3}]
    with pytest.raises(ValueError, match="num_clients must be 4"):
        partition_indices(labels, domains, PartitionConfig(kind="domain"), 3, seed=0)


def test_longtail_follows_the_imbalance_factor():
    labels, domains = _labels_domains(n=5000)
    keep = longtail_indices(labels, 10.0, seed=0)
    counts = np.bincount(labels[keep], minlength=10)
    assert counts[0] / counts[-1] == pytest.approx(10.0, rel=0.05)
    assert np.all(np.diff(counts) <= 0)
    parts = partition_indices(labels, domains, PartitionConfig(kind="longtail", imbalance_factor=10), 4, seed=0)
    assert sum(len(p) for p in parts) == len(keep)


def test_more_clients_than_examples_is_refused():
    labels, domains = _labels_domains(n=5)
    with pytest.raises(ValueError, match="num_clients=6 exceeds the 5 examples"):
        partition_indices(labels, domains, PartitionConfig(kind="iid"), 6, seed=0)


def test_client_split_and_federation_are_seeded():
    train, test = split_train_test(np.arange(100), 0.2, seed=3)
    assert len(test) == 20 and not set(train) & set(test) and len(set(train) | set(test)) == 100
    cfg = DataConfig(num_clients=6, partition=PartitionConfig(kind="dirichlet", alpha=0.3))
    a, b = load_federation(cfg, seed=1), load_federation(cfg.model_copy(deep=True), seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a.partitions, b.partitions, strict=True))
    c = load_federation(cfg, seed=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a.partitions, c.partitions, strict=True))
    tr, te = a.client(0)
    assert len(tr) + len(te) == len(a.partitions[0])
    with pytest.raises(IndexError, match="partition-id 6"):
        a.client(6)


def test_cifar_loader_reads_torchvision_layout(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}

    for name, n in [*[(f"data_batch_{i}", 20) for i in range(1, 6)], ("test_batch", 30)]:
        (folder / name).write_bytes(pickle.dumps(batch(n)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # Our files are not the real ones: skip torchvision's md5 checks, keep its parsing.
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    fed = load_federation(DataConfig(dataset="cifar10", path=str(tmp_path), num_clients=4), seed=0)
    assert fed.class_names == [f"c{i}" for i in range(10)]
    assert len(fed.test) == 30 and len(fed.public) == 15 and len(fed.pool) == 85
    assert fed.pool.images.shape[1:] == (32, 32, 3)
    with pytest.raises(FileNotFoundError, match="set data.download=true"):
        load_federation(DataConfig(dataset="cifar100", path=str(tmp_path / "none"), num_clients=4), seed=0)


def _png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 24), colour).save(path)


def test_image_folder_domain_class_layout(tmp_path):
    for d, colour in [("clipart", (255, 0, 0)), ("sketch", (0, 0, 255))]:
        for c in ("cat", "dog"):
            for i in range(10):
                _png(tmp_path / d / c / f"{i}.png", colour)
    cfg = DataConfig(dataset="folder", path=str(tmp_path), image_size=16, num_clients=2,
                     partition=PartitionConfig(kind="domain"), public_fraction=0.1, test_fraction=0.2)
    fed = load_federation(cfg, seed=0)
    assert fed.class_names == ["cat", "dog"] and fed.domain_names == ["clipart", "sketch"]
    assert len(fed.pool) + len(fed.test) + len(fed.public) == 40
    assert fed.pool.images.shape[1:] == (16, 16, 3)
    red = fed.pool.images[fed.pool.domains == 0]
    assert red[..., 0].min() > 200 and red[..., 2].max() < 50
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_federation(cfg.model_copy(update={"path": str(tmp_path / "missing")}), seed=0)


def test_huggingface_dataset_from_a_local_directory(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(40)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    ds = datasets.Dataset.from_dict({"img": images, "label": [i % 3 for i in range(40)]}, features=features)
    (tmp_path / "data").mkdir()
    ds.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    cfg = DataConfig(dataset="huggingface", path=str(tmp_path), num_clients=2, image_size=16)
    fed = load_federation(cfg, seed=0)
    assert fed.class_names == ["a", "b", "c"]
    assert len(fed.pool) + len(fed.test) + len(fed.public) == 40 and fed.pool.images.shape[1:] == (16, 16, 3)
    with pytest.raises(ValueError, match="no column 'image'"):
        load_federation(cfg.model_copy(update={"image_key": "image"}), seed=0)


def test_the_rendering_is_made_once_and_read_back_identical(tmp_path, monkeypatch):
    from fedgen.data import digits

    monkeypatch.setattr(digits, "CACHE_DIR", tmp_path)
    first = digits.load_digits_domains(0.15, 0.15, 0)  # rendered, and kept
    [cached] = tmp_path.glob("digits-domains-*.npz")
    fresh = digits.render_splits(0.15, 0.15, 0)
    monkeypatch.setattr(digits, "render_splits", lambda *a: pytest.fail("rendered again, the cache not read"))
    again = digits.load_digits_domains(0.15, 0.15, 0)
    for name in ("pool", "test", "public"):
        for got in (first[name], again[name]):
            fields = ("images", "labels", "domains")
            assert all(np.array_equal(getattr(got, f), getattr(fresh[name], f)) for f in fields)
            assert got.images.dtype == np.uint8 and got.labels.dtype == fresh[name].labels.dtype
            assert got.images.strides == fresh[name].images.strides  # the memory order a convolution's bits follow
    monkeypatch.undo()
    monkeypatch.setattr(digits, "CACHE_DIR", tmp_path)
    cached.write_bytes(b"not an npz")  # damaged: rendered again and replaced
    assert np.array_equal(digits.load_digits_domains(0.15, 0.15, 0)["pool"].images, fresh["pool"].images)
    assert np.load(cached)["pool/images"].shape == fresh["pool"].images.transpose(0, 3, 1, 2).shape
    digits.load_digits_domains(0.2, 0.15, 0)  # other fractions: a file of their own
    assert len(list(tmp_path.glob("digits-domains-*.npz"))) == 2
