//! `hearth emulate wecom`: its arguments and the command, a local WeCom intelligent robot platform until
//! SIGINT/SIGTERM (`emulator::wecom`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use emulator::wecom::{EmulatorConfig, InFlightOverflow, StreamExpiry};

/// Settings of `hearth emulate wecom`; defaults are the platform's documented behaviour
/// (`emulator::wecom::EmulatorConfig::default`).
#[derive(Debug, Args)]
pub struct WeComEmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8092)]
    pub port: u16,
    /// The robot's BotID.
    #[arg(long, value_name = "ID", default_value = emulator::wecom::DEFAULT_BOT_ID)]
    pub bot_id: String,
    /// The long-connection Secret.
    #[arg(long, value_name = "SECRET", default_value = emulator::wecom::DEFAULT_SECRET)]
    pub secret: String,
    /// The callback Token (URL mode).
    #[arg(long, value_name = "TOKEN", default_value = emulator::wecom::DEFAULT_TOKEN)]
    pub token: String,
    /// The callback EncodingAESKey (43 characters).
    #[arg(long, value_name = "KEY", default_value = emulator::wecom::DEFAULT_ENCODING_AES_KEY)]
    pub encoding_aes_key: String,
    /// The robot's name, which group messages @-mention.
    #[arg(long, value_name = "NAME", default_value = "hearth")]
    pub bot_name: String,
    /// Start in URL mode, pushing to this callback URL (unverified; the control API verifies one it sets).
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,
    /// Stream lifetime in seconds.
    #[arg(long, value_name = "N", default_value_t = 360)]
    pub stream_ttl_secs: u64,
    /// How the lifetime is read on the long connection: absolute (from the user's message) or inactivity
    /// (from the last update).
    #[arg(long, value_name = "READING", default_value = "absolute")]
    pub stream_expiry: StreamExpiry,
    /// Acknowledge updates of an expired stream with 0 and drop them, instead of errcode 846608.
    #[arg(long)]
    pub accept_expired_updates: bool,
    /// Messages of one user awaiting a reply at once (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_in_flight: usize,
    /// What a message over that limit does: refuse or hold.
    #[arg(long, value_name = "WHAT", default_value = "refuse")]
    pub in_flight_overflow: InFlightOverflow,
    /// Milliseconds between stream refresh callbacks (URL mode).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub refresh_interval_ms: u64,
    /// Seconds a callback POST may take.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub callback_timeout_secs: u64,
    /// Retries of a failed message callback.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub callback_retries: u32,
    /// Accept passive replies padded to 16-byte blocks (the official samples pad to 32).
    #[arg(long)]
    pub accept_16_byte_padding: bool,
    /// Lifetime of a response_url, in seconds.
    #[arg(long, value_name = "N", default_value_t = 3600)]
    pub response_url_ttl_secs: u64,
    /// Accept msgtype stream on a response_url.
    #[arg(long)]
    pub response_url_accepts_stream: bool,
}

impl WeComEmulatorArgs {
    /// The emulator's config.
    pub fn emulator_config(&self) -> EmulatorConfig {
        EmulatorConfig {
            bot_id: self.bot_id.clone(),
            secret: self.secret.clone(),
            token: self.token.clone(),
            encoding_aes_key: self.encoding_aes_key.clone(),
            bot_name: self.bot_name.clone(),
            callback_url: self.callback_url.clone(),
            stream_ttl: Duration::from_secs(self.stream_ttl_secs),
            stream_expiry: self.stream_expiry,
            refuse_expired_updates: !self.accept_expired_updates,
            max_in_flight_per_user: self.max_in_flight,
            in_flight_overflow: self.in_flight_overflow,
            refresh_interval: Duration::from_millis(self.refresh_interval_ms),
            callback_timeout: Duration::from_secs(self.callback_timeout_secs),
            callback_retries: self.callback_retries,
            accept_16_byte_padding: self.accept_16_byte_padding,
            response_url_ttl: Duration::from_secs(self.response_url_ttl_secs),
            response_url_accepts_stream: self.response_url_accepts_stream,
            ..EmulatorConfig::default()
        }
    }
}

/// `hearth emulate wecom`: a local WeCom until SIGINT/SIGTERM.
pub fn emulate(args: WeComEmulatorArgs) -> anyhow::Result<ExitCode> {
    let config = args.emulator_config();
    crate::commands::emulate(&args.host, args.port, |addr| async move {
        let wecom = emulator::wecom::WeComEmulator::start(config, addr).await?;
        let base = wecom.base_url();
        tracing::info!(
            bot_id = %wecom.config().bot_id,
            "WeCom emulator: long connection at {} (the SDK's wsUrl), page at {base}/_emulator",
            wecom.ws_url()
        );
        // One line on stdout, for scripts that start the emulator on port 0.
        println!("{base}");
        Ok(wecom.run_until(gateway::server::shutdown_signal()).await?)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command, EmulatePlatform};

    #[test]
    fn defaults_are_the_documented_platform_and_flags_override_them() {
        let cli = Cli::try_parse_from(["hearth", "emulate", "wecom", "--port", "0"]).unwrap();
        let Command::Emulate(args) = cli.command else {
            panic!("emulate")
        };
        let EmulatePlatform::Wecom(args) = args.platform else {
            panic!("wecom")
        };
        let config = args.emulator_config();
        let defaults = emulator::wecom::EmulatorConfig::default();
        assert_eq!(config.stream_ttl, defaults.stream_ttl);
        assert_eq!(config.stream_expiry, defaults.stream_expiry);
        assert_eq!(config.max_in_flight_per_user, 3);
        assert!(config.refuse_expired_updates);
        let cli = Cli::try_parse_from([
            "hearth",
            "emulate",
            "wecom",
            "--stream-expiry",
            "inactivity",
            "--in-flight-overflow",
            "hold",
            "--accept-expired-updates",
        ])
        .unwrap();
        let Command::Emulate(args) = cli.command else {
            panic!("emulate")
        };
        let EmulatePlatform::Wecom(args) = args.platform else {
            panic!("wecom")
        };
        let config = args.emulator_config();
        assert_eq!(config.stream_expiry, emulator::wecom::StreamExpiry::Inactivity);
        assert_eq!(config.in_flight_overflow, emulator::wecom::InFlightOverflow::Hold);
        assert!(!config.refuse_expired_updates);
        assert!(Cli::try_parse_from(["hearth", "emulate", "wecom", "--stream-expiry", "sometimes"]).is_err());
    }
}
