"""A small ImageFolder tree for the trainer's streaming tests."""


def image_tree(root, classes=3, per_class=16, seed=0):
    """root/<class>/<i>.png: RGB images of random pixels in a few sizes (the decoder resizes them), each a
    random coarse pattern plus pixel noise, so that the features of a fresh network are not all alike."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = ((20, 24), (24, 20), (17, 31))[i % 3]
            coarse = rng.integers(0, 256, size=(3, 4, 3)).repeat(-(-h // 3), 0).repeat(-(-w // 4), 1)[:h, :w]
            pixels = np.clip(coarse + rng.integers(-40, 41, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / f"class{c}" / f"{i:02d}.png")
    return root
