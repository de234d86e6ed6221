//! A training run's request, typed: what `train_lora` and `train_dpo` were asked, parsed once (in
//! [`crate::api`]) and taken by the trainer.

use crate::dpo;
use crate::trainer::Hyper;
use rtlab_data::Frame;
use rtlab_model::checkpointing::Checkpointing;
use rtlab_model::examples::TooLong;
use rtlab_model::model::LoraSpec;
use std::path::{Path, PathBuf};

/// What a run trains the adapters to do, with the rows it learns from.
pub enum Task {
    /// `train_lora`: supervised fine-tuning on (prompt, response) rows.
    Sft {
        data: Frame,
        prompt_col: String,
        response_col: String,
        /// An adapter to go on training (rejection-sampling SFT on top of an SFT run).
        adapter: Option<PathBuf>,
    },
    /// `train_dpo`: preference optimization on (prompt, chosen, rejected) rows.
    Dpo {
        pairs: Frame,
        settings: dpo::Settings,
        /// The SFT adapter the policy starts from (and, with `reference: "adapter"`, is measured
        /// against).
        adapter: Option<PathBuf>,
    },
}

impl Task {
    /// The adapter the run starts from, when it does not start from fresh adapters.
    pub fn start_adapter(&self) -> Option<&Path> {
        match self {
            Task::Sft { adapter, .. } | Task::Dpo { adapter, .. } => adapter.as_deref(),
        }
    }
}

/// Every option `train_lora` and `train_dpo` take, with its parsed value.
pub struct TrainRequest {
    pub base: PathBuf,
    pub task: Task,
    /// The prompt template with `{prompt}`; None: the base's own chat template, else Alpaca's.
    pub template: Option<String>,
    pub spec: LoraSpec,
    pub hyper: Hyper,
    pub warmup: f64,
    pub max_len: usize,
    pub out: PathBuf,
    pub resume: bool,
    pub fresh: bool,
    /// `--trust-cache`: a finished run made by another trainer is served, not retrained.
    pub trust_cache: bool,
    pub on_too_long: TooLong,
    pub device: String,
    /// QLoRA: the frozen base stays in its GGUF quantization.
    pub quantized_base: bool,
    /// Which layers' activations the backward recomputes instead of keeping (CPU only; the
    /// gradients are the same numbers, so not part of the run's fingerprint).
    pub gradient_checkpointing: Checkpointing,
    /// Validation rows (the training rows' kind), how often to measure, which adapter to keep.
    pub eval_data: Option<Frame>,
    pub eval_every: Option<usize>,
    pub keep_best: bool,
}
