"""The registered learners' and methods' names and descriptions, readable without importing torch, so that
`textdistill list learners` and `list methods` answer at once. The registries (``learners.DESCRIPTIONS``,
``methods.METHODS``) stay the truth: a test checks that they agree."""

LEARNERS = {
    "minilm": "all-MiniLM-L6-v2 with a new head, fully fine-tuned (CPU default)",
    "mpnet": "all-mpnet-base-v2 with a new head, fully fine-tuned (110M; fetched on first use)",
    "smollm2-135m": "SmolLM2-135M-Instruct (decoder) as a sequence classifier, fully fine-tuned",
    "smollm2-135m-lora": "SmolLM2-135M-Instruct as a sequence classifier, LoRA rank 8 and the head",
    "minilm-frozen": "linear head on frozen mean-pooled all-MiniLM-L6-v2 vectors (cheap)",
    "mpnet-frozen": "linear head on frozen mean-pooled all-mpnet-base-v2 vectors (768-d)",
    "smollm2-135m-frozen": "linear head on frozen mean-pooled SmolLM2-135M hidden states (block 18; reads any script)",
    "textcnn-glove": "TextCNN (filters 3/4/5 x 100) over frozen GloVe 50d, from scratch",
    "bilstm-glove": "BiLSTM (128 per direction, mean pooling) over frozen GloVe 50d, from scratch",
    "setfit-minilm": "SetFit: all-MiniLM-L6-v2 fine-tuned on sentence pairs, logistic-regression head",
    "setfit-mpnet": "SetFit: all-mpnet-base-v2 fine-tuned on sentence pairs, logistic-regression head",
    "smollm2-135m-lm": "SmolLM2-135M-Instruct fine-tuned on responses; judged on choice and continuation tasks",
    "qwen2.5-0.5b-lm": "Qwen2.5-Coder-0.5B-Instruct fine-tuned on responses (fetched on first use); judged on choice "
                       "and continuation tasks",
}

METHODS = {
    "bptt": "token-embedding sentences, soft labels and step sizes learned through unrolled training",
    "attention-labels": "bptt plus learned per-layer, per-head attention labels (transformer learners)",
    "condense": "an instruct LM condenses mixed-class subsets of real examples; reward models pick its answers",
    "random": "uniformly random real examples per class",
    "kcenter": "greedy farthest-point (k-center) selection from a seeded random start",
    "kmeans": "per-class k-means; the real example nearest each centroid (DiLM's k-centers)",
    "herding": "herding (Welling 2009): greedily keep the running mean closest to the class mean",
    "pack": "per-class k-means; each example glues one cluster's real members, nearest first, up to max length",
    "dc": "gradient matching per class (token embeddings or frozen sentence vectors)",
    "dilm": "a generator LM trained by gradient matching writes the set as text (model-agnostic)",
    "dm": "distribution matching of per-class representations (mean or MMD) under fresh learners",
    "embed-invert": "vectors learned in a sentence space (dm, mtt, dc), written back as text (nearest or LM search)",
    "file": "a text set read from a file (e.g. a published distilled set), checked against the task",
    "gradmm": "gradient matching in a decoder LM's embedding space, projected onto readable tokens by ADMM",
    "learned-labels": "coreset texts with class distributions learned through unrolled training (text, any learner)",
    "mtt": "trajectory matching against expert learners trained on the real data",
    "prompt-mtt": "instruction embeddings of a causal LM learned by trajectory matching, written as their nearest "
                  "tokens",
    "unidetox": "contrastive decoding of an LM against its copy fine-tuned on the toxic texts: detoxifying text for "
                "any LM (continuation tasks)",
}
