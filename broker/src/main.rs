//! The `warren` binary: parse the command line, set up logging, bind, run until SIGINT/SIGTERM.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info};
use warren::broker::Broker;
use warren::cli::{Cli, Command};
use warren::config::LogFormat;
use warren::server::{self, Listener};

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(command) = cli.command.take() {
        return companion(command);
    }
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warren: {e:#}");
            return ExitCode::from(2);
        }
    };
    // openraft logs every unreachable peer at warn and error: an operator sees Warren's own line
    // about a lost link instead, unless the filter names openraft.
    let log = if config.log.contains("openraft") {
        config.log.clone()
    } else {
        format!("{},openraft=off", config.log)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        // Colours only on a terminal (and never with NO_COLOR set): a file or a pipe gets plain text.
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .with_env_filter(filter)
            .init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a companion command (`warren hash-password`, `warren ping`).
fn companion(command: Command) -> ExitCode {
    match command {
        Command::HashPassword { password } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut p = String::new();
                    if let Err(e) = std::io::stdin().read_to_string(&mut p) {
                        eprintln!("warren: cannot read the password from standard input: {e}");
                        return ExitCode::from(2);
                    }
                    p.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            println!("{}", warren::companions::hash_password(&password));
            ExitCode::SUCCESS
        }
        Command::Plugin(warren::cli::PluginCommand::Check { file }) => {
            match warren::plugin::check::check(&file) {
                Ok(report) => {
                    print!("{}", report.text);
                    if report.accepted {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(why) => {
                    eprintln!("warren plugin check: {why}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Plugin(warren::cli::PluginCommand::Test {
            file,
            input,
            arguments,
            bindings,
            messages,
            headers,
        }) => {
            use warren::plugin::trial::{Trial, TrialBinding, TrialMessage, TrialParts};
            let mut trial = match &input {
                Some(path) => match Trial::from_file(path) {
                    Ok(t) => t,
                    Err(why) => {
                        eprintln!("warren plugin test: {why}");
                        return ExitCode::from(2);
                    }
                },
                None => Trial::default(),
            };
            let arguments = match arguments.as_deref().map(serde_json::from_str) {
                None => serde_json::Map::new(),
                Some(Ok(serde_json::Value::Object(o))) => o,
                Some(_) => {
                    eprintln!("warren plugin test: --arguments must be a JSON object");
                    return ExitCode::from(2);
                }
            };
            let split = |s: &String| match s.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (s.clone(), String::new()),
            };
            trial.extend(Trial {
                arguments,
                bindings: bindings.into_iter().map(TrialBinding::Key).collect(),
                messages: messages
                    .iter()
                    .map(|m| {
                        let (routing_key, body) = split(m);
                        TrialMessage::Full(TrialParts {
                            routing_key,
                            body,
                            ..TrialParts::default()
                        })
                    })
                    .collect(),
                headers: headers
                    .iter()
                    .map(|h| {
                        let (k, v) = split(h);
                        (k, serde_json::Value::String(v))
                    })
                    .collect(),
            });
            match warren::plugin::trial::run(&file, &trial) {
                Ok(outcome) => {
                    print!("{}", outcome.text);
                    if outcome.passed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(why) => {
                    eprintln!("warren plugin test: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Plugin(warren::cli::PluginCommand::New {
            kind,
            name,
            dir,
            sdk_path,
        }) => {
            use warren::plugin::scaffold::{create, Sdk};
            let dir = dir.unwrap_or_else(|| std::path::PathBuf::from(&name));
            let sdk = match sdk_path {
                Some(p) => match p.canonicalize() {
                    Ok(p) if p.join("Cargo.toml").is_file() => Sdk::Path(p),
                    _ => {
                        eprintln!(
                            "warren plugin new: --sdk-path {}: no SDK crate there",
                            p.display()
                        );
                        return ExitCode::from(2);
                    }
                },
                None => Sdk::default_for_this_build(),
            };
            match create(kind, &name, &dir, &sdk) {
                Ok(created) => {
                    println!(
                        "created {kind} plugin '{name}' in {}: {}",
                        created.dir.display(),
                        created
                            .files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    match &sdk {
                        Sdk::Path(p) => println!("warren-plugin-sdk from {}", p.display()),
                        Sdk::Registry => println!(
                            "warren-plugin-sdk = \"0.1\" from the registry (no SDK checkout found; \
                             give --sdk-path to use one)"
                        ),
                    }
                    println!(
                        "next: cd {} && cargo test && cargo build --release --target wasm32-wasip2 \
                         && warren plugin check {}",
                        created.dir.display(),
                        created.wasm.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("warren plugin new: {why}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Ping { address } => match warren::companions::ping(&address) {
            Ok(()) => {
                println!("ok: {address} answered connection.start");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("warren ping: {why}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(config: warren::config::Config) -> anyhow::Result<()> {
    let mut listeners: Vec<Listener> = Vec::new();
    for addr in &config.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        info!(address = %listener.local_addr()?, "listening for AMQP 0-9-1");
        listeners.push(listener.into());
    }
    if let Some(tls) = &config.tls {
        let acceptor = warren::tls::acceptor(tls).context("setting up TLS ([tls])")?;
        for addr in &tls.listen {
            let tcp = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} (TLS)"))?;
            info!(address = %tcp.local_addr()?, "listening for AMQP 0-9-1 over TLS");
            listeners.push(Listener {
                tcp,
                tls: Some(acceptor.clone()),
            });
        }
    }
    // The node's listeners, as the management API reports them.
    let mut known: Vec<warren::management::Listener> = Vec::new();
    for l in &listeners {
        known.push(warren::management::Listener {
            protocol: if l.tls.is_some() { "amqp/ssl" } else { "amqp" },
            address: l.tcp.local_addr()?,
        });
    }
    let management = if config.management.enabled {
        let addr = &config.management.listen;
        let tcp = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "binding {addr} (management API; [management] listen, or --management-listen off)"
            )
        })?;
        let address = tcp.local_addr()?;
        info!(address = %address, "serving the management HTTP API");
        known.push(warren::management::Listener {
            protocol: "http",
            address,
        });
        Some(tcp)
    } else {
        None
    };
    let prometheus = if config.prometheus.enabled {
        let addr = &config.prometheus.listen;
        let tcp = TcpListener::bind(addr).await.with_context(|| {
            format!("binding {addr} (Prometheus metrics; [prometheus] listen, or --prometheus-listen off)")
        })?;
        info!(address = %tcp.local_addr()?, "serving Prometheus metrics");
        Some(tcp)
    } else {
        None
    };
    let broker = Arc::new(
        Broker::new(config)
            .context("loading users, permissions, policies, definitions and the data directory")?,
    );
    broker.join_cluster().await.context("joining the cluster")?;
    if let Some(tcp) = management {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            if let Err(e) = warren::management::serve(tcp, broker, known).await {
                error!(error = %e, "the management HTTP API stopped");
            }
        });
    }
    if let Some(tcp) = prometheus {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            if let Err(e) =
                warren::prometheus::serve(tcp, Arc::clone(&broker), broker.node_name()).await
            {
                error!(error = %e, "the Prometheus endpoint stopped");
            }
        });
    }
    server::run(listeners, broker, shutdown_signal()).await;
    info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
