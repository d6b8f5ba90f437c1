"""Attention shapes read from a transformers config, whatever names the architecture gives them."""


def head_dim(config) -> int:
    """Dimensions per attention head."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_heads(config) -> int:
    """Key/value heads (fewer than query heads under grouped-query attention)."""
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def text_config(model):
    """The config of the model's text decoder: its own, or the text part of a multimodal one."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config
