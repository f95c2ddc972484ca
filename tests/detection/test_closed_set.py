"""Closed-set control: learned name vectors replace the text features of the names' tokens."""

import torch

from lightning_modules.components.detection.closed_set_names import ClosedSetNames


def test_name_tokens_get_their_name_vector_and_special_tokens_keep_theirs() -> None:
    feats = torch.randn(2, 7, 4)
    pmap = torch.zeros(2, 2, 7)
    pmap[0, 0, 1:3], pmap[0, 1, 4] = 1, 1  # caption 0: "red seven" (2 tokens), "blue bag"
    pmap[1, 0, 1] = 1  # caption 1: one name, unknown to the control
    control = ClosedSetNames(["red seven", "blue bag"], dim=4)
    out = control(feats, pmap, [["red seven", "blue bag"], ["green seven"]])
    vec = control.embed.weight
    torch.testing.assert_close(out[0, 1], vec[0])
    torch.testing.assert_close(out[0, 2], vec[0])
    torch.testing.assert_close(out[0, 4], vec[1])
    torch.testing.assert_close(out[1, 1], vec[2])  # the shared "unknown" row
    for b, t in ((0, 0), (0, 3), (0, 5), (0, 6), (1, 0), (1, 2)):
        assert torch.equal(out[b, t], feats[b, t])
    out.sum().backward()
    assert control.embed.weight.grad[:3].abs().sum() > 0


def test_module_trains_the_closed_set_vectors(make_module, synthetic_batch) -> None:
    batch = synthetic_batch(2, max_labels=4)
    prompt = batch["prompts"][0]
    names = sorted({n for caption in prompt.names for n in caption})
    module = make_module()
    module.closed_set = ClosedSetNames(names, dim=64)
    text = module.encode_prompt(prompt).memory_text
    plain = make_module()
    reference = plain.encode_prompt(prompt).memory_text
    named = prompt.positive_map.sum(1) > 0  # (B, T) tokens inside a name
    assert not torch.allclose(text[named], reference[named])
    module.detector.feat_map.load_state_dict(plain.detector.feat_map.state_dict())
    text = module.encode_prompt(prompt).memory_text
    torch.testing.assert_close(text[~named], reference[~named])  # special tokens unchanged
    optimizer = module.configure_optimizers()["optimizer"]
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(module.closed_set.embed.weight) in held
