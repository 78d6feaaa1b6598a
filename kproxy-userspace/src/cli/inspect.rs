//! `kproxy inspect` and `kproxy explain`: the CLI over `kproxy::inspect`.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use kproxy::{
    ebpf::{DEFAULT_PIN_DIR, verify},
    inspect::{Inspection, explain::Probe, json, table},
    model::Protocol,
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    what: Option<InspectWhat>,
    /// The agent's --pin-path.
    #[arg(long, global = true, default_value = DEFAULT_PIN_DIR)]
    pin_path: PathBuf,
    /// Only this service (`namespace/name`) or service port (`namespace/name:port`).
    #[arg(long)]
    service: Option<String>,
    /// Compare the maps with the recorded model; exit status 1 on any difference.
    #[arg(long, conflicts_with = "service")]
    verify: bool,
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: Output,
}

#[derive(Subcommand)]
enum InspectWhat {
    /// The datapath's conntrack entries, labelled with service and KUBE-SEP chain.
    Conntrack,
}

/// Prints `text`, flushed (a drift report exits right after).
fn print_flushed(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

impl InspectArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let inspection = Inspection::open(&self.pin_path)?;
        let json = self.output == Output::Json;
        if let Some(InspectWhat::Conntrack) = self.what {
            let flows = inspection.conntrack()?;
            return print_flushed(&if json {
                json::to_string(&flows)
            } else {
                table::flows(&flows)
            });
        }
        if self.verify {
            let drift = verify(
                inspection.maps()?,
                &inspection.desired(),
                &inspection.expected_node_addresses(),
            )?;
            let report = json::VerifyReport::new(
                self.pin_path.display().to_string(),
                inspection.recorded.applied.sync,
                &drift,
            );
            print_flushed(&if json {
                json::to_string(&report)
            } else {
                table::drift(&drift)
            })?;
            if !drift.is_empty() {
                std::process::exit(1);
            }
            return Ok(());
        }
        let report = inspection.report(self.service.as_deref())?;
        print_flushed(&if json {
            json::to_string(&report)
        } else {
            table::report(&report)
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

#[derive(Args)]
pub struct ExplainArgs {
    #[arg(long, value_enum)]
    proto: Proto,
    /// The client: IP or IP:PORT (port 43210 when omitted).
    #[arg(long)]
    src: String,
    /// The destination the client dials: IP:PORT.
    #[arg(long)]
    dst: SocketAddrV4,
    /// The interface the packet arrives on (for interface-based local-traffic detection).
    #[arg(long)]
    in_iface: Option<String>,
    /// The agent's --pin-path.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_path: PathBuf,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Output,
}

/// Source port of a probe whose --src names none.
const DEFAULT_SOURCE_PORT: u16 = 43210;

impl ExplainArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let src = match self.src.parse::<SocketAddrV4>() {
            Ok(addr) => addr,
            Err(_) => SocketAddrV4::new(
                self.src
                    .parse::<Ipv4Addr>()
                    .with_context(|| format!("--src {:?}: not IPv4 or IPv4:PORT", self.src))?,
                DEFAULT_SOURCE_PORT,
            ),
        };
        let probe = Probe {
            protocol: match self.proto {
                Proto::Tcp => Protocol::Tcp,
                Proto::Udp => Protocol::Udp,
            },
            src,
            dst: self.dst,
            in_iface: self.in_iface,
        };
        let explanation = Inspection::open(&self.pin_path)?.explain(&probe)?;
        print_flushed(&match self.output {
            Output::Json => json::to_string(&explanation),
            Output::Table => table::explanation(&explanation),
        })
    }
}
