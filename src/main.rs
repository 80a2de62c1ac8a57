//! The `eiplab` command. Only the pure translation core is built so far; the control plane
//! (API) and the lab of namespaces come in later issues, and the commands that need them say
//! so instead of pretending.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "eiplab",
    version,
    about = "Emulates, packet by packet, how a cloud Elastic IP reaches a guest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab from LAB.toml and run it until interrupted (not built yet).
    Up {
        lab: PathBuf,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long)]
        pcap: Option<PathBuf>,
    },
    /// Remove what a killed `up` left behind (not built yet).
    Down {
        lab: PathBuf,
        #[arg(long)]
        prefix: Option<String>,
    },
    /// List the engine's drop reasons with the rule each stands for.
    Reasons,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Up { lab, .. } | Command::Down { lab, .. } => {
            eprintln!(
                "eiplab: the lab is not built yet ({}): this version has the translation engine \
                 only (see README, \"Status\"). Run ./scripts/test.sh to exercise it.",
                lab.display()
            );
            ExitCode::from(2)
        }
        Command::Reasons => {
            for r in eiplab::engine::DropReason::ALL {
                println!("{}", r.name());
            }
            ExitCode::SUCCESS
        }
    }
}
