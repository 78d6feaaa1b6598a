//! `kproxy bench render`: how fast the iptables renderer turns a large model into text.

use std::time::Instant;

use anyhow::Context as _;
use clap::Subcommand;
use kproxy::{
    config::ProxyConfig,
    iptables::{self, RenderOptions, Runtime, jumps},
    model::{self, Cidr, IpFamily, NodeInfo},
};

#[derive(Subcommand)]
pub enum Bench {
    /// Time rendering a generated model (ClusterIP+NodePort services, ready endpoints).
    Render {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 2)]
        endpoints: usize,
        /// Repetitions; the best time of each stage is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

impl Bench {
    pub fn run(self) -> anyhow::Result<()> {
        let Bench::Render {
            services,
            endpoints,
            runs,
        } = self;
        let model = model::synthetic(services, endpoints);
        let config = ProxyConfig {
            cluster_cidrs: vec![Cidr::parse_sloppy("10.128.0.0/9").context("literal CIDR")?],
            ..ProxyConfig::default()
        };
        let node = NodeInfo::new("node-0", IpFamily::V4);
        let options = RenderOptions::new(&config, &node, Runtime::default())?;
        let jumps = jumps::jump_rules(&options);
        let mut best = [f64::MAX; 3];
        let mut sizes = (0, 0, 0);
        for _ in 0..runs.max(1) {
            let start = Instant::now();
            let ruleset = iptables::render(&model, &options);
            let rendered = start.elapsed().as_secs_f64();
            let payload = iptables::restore::payload(&ruleset, None);
            let restored = start.elapsed().as_secs_f64();
            let saved = iptables::save::save(&ruleset, &jumps, None);
            let total = start.elapsed().as_secs_f64();
            for (slot, value) in best
                .iter_mut()
                .zip([rendered, restored - rendered, total - restored])
            {
                *slot = slot.min(value);
            }
            sizes = (
                ruleset.filter.rules.len() + ruleset.nat.rules.len(),
                payload.len(),
                saved.len(),
            );
        }
        println!(
            "model: {services} services x {endpoints} endpoints; {} rules, restore payload {} bytes, save {} bytes",
            sizes.0, sizes.1, sizes.2
        );
        println!("render (model -> rules):      {:>8.1} ms", best[0] * 1e3);
        println!("restore payload (rules -> text): {:>5.1} ms", best[1] * 1e3);
        println!("save view (rules -> text):    {:>8.1} ms", best[2] * 1e3);
        println!(
            "render + restore payload:     {:>8.1} ms",
            (best[0] + best[1]) * 1e3
        );
        Ok(())
    }
}
