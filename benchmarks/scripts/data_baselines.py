"""Unigram perplexity baselines and data-pipeline timings of the Cognate curriculum, per stage.

Usage: FORGE_DATA_DIR=../shared/data python benchmarks/scripts/data_baselines.py --json data_baselines.json
Default curriculum (2M characters per stage), sources local then offline, 10% of documents held out,
block 256; GPT-2 BPE against a 4096-token BPE trained on the training documents.
"""
import argparse
import json
import time

from forge.pretrain.stages import StageMixConfig, build_stages
from forge.data.lm_dataset import build_lm_data, split_documents, unigram_perplexity
from forge.data.sources import SourceConfig
from forge.data.tokenizer import load_gpt2_tokenizer, train_bpe_tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    out = {}
    start = time.perf_counter()
    stages = build_stages(StageMixConfig(sources=SourceConfig(order=("local", "offline"))))
    out["build_curriculum_s"] = round(time.perf_counter() - start, 2)
    gpt2 = load_gpt2_tokenizer()
    train_texts = [text for mix in stages for text in split_documents(mix.texts, 0.1, 0)[0]]
    start = time.perf_counter()
    bpe = train_bpe_tokenizer(train_texts, vocab_size=4096, seed=0, max_texts=20000)
    out["train_bpe_4096_s"] = round(time.perf_counter() - start, 2)
    out["stages"] = []
    for mix in stages:
        row = {"stage": mix.stage, "documents": len(mix.texts), "chars": sum(map(len, mix.texts)),
               "sources": {d.dataset: d.source for d in mix.draws}}
        for name, tokenizer in (("gpt2", gpt2), ("bpe4096", bpe)):
            start = time.perf_counter()
            data = build_lm_data(mix.texts, tokenizer, block_size=256, val_fraction=0.1, seed=0)
            row[name] = {"tokenize_pack_s": round(time.perf_counter() - start, 2),
                         "train_tokens": len(data.train_token_ids), "val_tokens": len(data.val_token_ids),
                         "unigram_ppl": round(unigram_perplexity(data.train_token_ids, data.val_token_ids,
                                                                 len(tokenizer)), 2)}
        out["stages"].append(row)
    with open(args.json, "w") as handle:
        json.dump(out, handle, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
