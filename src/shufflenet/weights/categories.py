"""Class names of the datasets public weights were trained on, in their label order.

Zoo files hold no class names, so a download tag's are looked up by its dataset here.
"""

from __future__ import annotations

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The 100 fine labels in the order of the dataset's meta file (alphabetical), which torchvision's
# CIFAR100 and the weights' training code use as the label indices.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


def imagenet_categories() -> tuple[str, ...]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def dataset_classes(dataset: str) -> tuple[str, ...] | None:
    """The class names of ``dataset`` as a tag names it ("ImageNet-1k", "CIFAR-10", "CIFAR-100"); None
    for another dataset (a bundled tag of one keeps its names in its own file)."""
    if dataset == "ImageNet-1k":
        return imagenet_categories()
    return {"CIFAR-10": CIFAR10_CLASSES, "CIFAR-100": CIFAR100_CLASSES}.get(dataset)
