//! The kernel programs' rare diagnostics (aya-log: a classifier decision, a failed map
//! write), forwarded into the agent's log. Never written on the per-packet path.

/// Forwards aya-log records to `tracing`, under the target `netguard::kernel`.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "netguard::kernel", "{message}"),
            log::Level::Warn => tracing::warn!(target: "netguard::kernel", "{message}"),
            log::Level::Info => tracing::info!(target: "netguard::kernel", "{message}"),
            log::Level::Debug => tracing::debug!(target: "netguard::kernel", "{message}"),
            log::Level::Trace => tracing::trace!(target: "netguard::kernel", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Forwards the kernel's log records as they come, until the task is dropped.
pub async fn forward(logger: aya_log::EbpfLogger<KernelLog>) -> anyhow::Result<()> {
    let mut logger = crate::sys::readable_fd(logger)?;
    loop {
        let mut guard = logger.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
