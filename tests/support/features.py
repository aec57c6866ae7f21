"""The (h, z) features of models on an image source, computed here as a test's oracle input."""
import torch


@torch.no_grad()
def features(models, source, idx: torch.Tensor, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(h, z)] of every model for the samples `idx` of an image source, in eval mode (restored after),
    float32."""
    x = source.load(idx).to(device)
    out = []
    for model in models:
        mode = model.training
        h, z = model.eval()(x)
        model.train(mode)
        out.append((h.float(), z.float()))
    return out
