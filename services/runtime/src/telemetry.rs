//! Logging: `GANTRY_LOG` is the tracing filter, `GANTRY_LOG_FORMAT=json` for JSON lines.
//!
//! Every line goes through the process's masker ([`gantry_pipeline::mask::process`])
//! on its way to stderr, so no code path can log a secret a pipeline names.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, writing to stderr, and OTLP trace
/// export when the OpenTelemetry variables ask for it ([`crate::traces`]);
/// `service` names this process there. Safe to call twice.
pub fn init(service: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_env("GANTRY_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn"));
    let json = std::env::var("GANTRY_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(MaskedStderr);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(crate::traces::layer(service));
    let _ = if json {
        registry.with(fmt.json().flatten_event(true)).try_init()
    } else {
        registry.with(fmt).try_init()
    };
}

/// Makes one [`MaskedLine`] per log event.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskedStderr;

impl<'a> MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedLine<std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        MaskedLine::new(std::io::stderr())
    }
}

/// Collects one formatted log event and writes it masked when dropped
/// (a secret split across two `write` calls is still found whole).
#[derive(Debug)]
pub struct MaskedLine<W: Write> {
    buf: Vec<u8>,
    out: W,
}

impl<W: Write> MaskedLine<W> {
    pub fn new(out: W) -> Self {
        MaskedLine {
            buf: Vec::with_capacity(256),
            out,
        }
    }
}

impl<W: Write> Write for MaskedLine<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for MaskedLine<W> {
    fn drop(&mut self) {
        let masker = gantry_pipeline::mask::process();
        let line = if masker.is_empty() {
            std::mem::take(&mut self.buf)
        } else {
            masker.mask_bytes(&self.buf, 0)
        };
        let _ = self.out.write_all(&line);
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_masked_even_when_written_in_pieces() {
        gantry_pipeline::mask::register_more(["line-secret-4242"]);
        let mut sink = Vec::new();
        {
            let mut line = MaskedLine::new(&mut sink);
            line.write_all(b"token=line-sec").expect("write");
            line.write_all(b"ret-4242 done\n").expect("write");
        }
        assert_eq!(String::from_utf8_lossy(&sink), "token=*** done\n");
    }
}
