from transformers import AutoTokenizer

from icegrt_trl.testbed import build_tokenizer


def test_round_trip_text():
    tok = build_tokenizer()
    text = "sort 3 1 2 :"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 5 and tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_prompt_plus_completion_tokenizes_as_parts():
    # TRL tokenizes prompt and prompt+completion separately; the split must line up.
    tok = build_tokenizer()
    prompt, completion = "reverse 4 5 :", " 5 4"
    joint = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    parts = tok(prompt, add_special_tokens=False)["input_ids"] + tok(completion, add_special_tokens=False)["input_ids"]
    assert joint == parts


def test_special_tokens_and_padding():
    tok = build_tokenizer()
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    assert tok.pad_token_id != tok.eos_token_id
    batch = tok(["sort 1 :", "sort 1 2 3 :"], padding=True)
    assert batch["input_ids"][0][0] == tok.pad_token_id  # left padding for generation
    assert tok.decode(tok(" 1 2 <eos>")["input_ids"], skip_special_tokens=True) == "1 2"


def test_chat_template_renders_generation_prompt():
    tok = build_tokenizer()
    messages = [{"role": "user", "content": "sort 3 1 2"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|user|> sort 3 1 2 <|assistant|> "
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": "1 2 3"}], tokenize=False)
    assert full.startswith("<|user|> sort 3 1 2 <|assistant|> 1 2 3") and "<eos>" in full


def test_save_and_reload(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "sort 9 0 :"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.chat_template == tok.chat_template
    assert (again.pad_token, again.eos_token, again.padding_side) == ("<pad>", "<eos>", "left")


def test_reload_beside_a_qwen2_model(tmp_path):
    # transformers picks Qwen2Tokenizer from a Qwen2 config.json; our loader keeps the saved class.
    from icegrt_trl.stages.loading import load_saved_tokenizer
    from icegrt_trl.testbed import tiny_causal_lm

    tok = build_tokenizer()
    tiny_causal_lm("qwen2", tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = load_saved_tokenizer(str(tmp_path))
    assert again("sort 3 1 :")["input_ids"] == tok("sort 3 1 :")["input_ids"]
    assert again.decode(again(" 1 2")["input_ids"]) == "1 2"
