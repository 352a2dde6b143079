//! Buffered I/O under the session loop: command lines in (with the length
//! limit), DATA bodies in (through the [`DataDecoder`]), replies out.
//!
//! RFC 2920 (PIPELINING): replies are queued and written only when the
//! next read would block, so a client that sends a batch of commands gets
//! its replies in order, in as few packets as possible.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::data::{DataDecoder, DataOutcome};
use crate::reply::Reply;

const READ_CHUNK: usize = 16 * 1024;

/// Any byte stream a session runs over: TCP, TLS over TCP, an in-memory
/// duplex in tests. STARTTLS swaps one for another under the session.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What reading a command line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, LF (and CR, if any) included.
    Complete(Vec<u8>),
    /// A line longer than the limit, read to its end and thrown away.
    TooLong,
    /// The client closed the connection.
    Eof,
}

pub struct Conn<S> {
    stream: S,
    read: Vec<u8>,
    write: Vec<u8>,
    /// Inside a too-long line: drop bytes up to the next LF.
    discarding: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            read: Vec::with_capacity(READ_CHUNK),
            write: Vec::new(),
            discarding: false,
        }
    }

    /// Queues a reply; it is written at the next [`Conn::flush`].
    pub fn queue(&mut self, reply: &Reply) {
        self.write.extend_from_slice(reply.to_wire().as_bytes());
    }

    /// Writes every queued reply. Cancel-safe: what was written is removed
    /// from the buffer as it goes, so a cancelled flush never repeats bytes.
    pub async fn flush(&mut self) -> io::Result<()> {
        while !self.write.is_empty() {
            let n = self.stream.write(&self.write).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.write.drain(..n);
        }
        self.stream.flush().await
    }

    /// Flushes and closes the write side.
    pub async fn close(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.stream.shutdown().await
    }

    /// The next command line of at most `max` bytes (CRLF included). Reads
    /// from the socket only when no whole line is buffered, flushing queued
    /// replies first. Cancel-safe.
    pub async fn read_line(&mut self, max: usize) -> io::Result<Line> {
        loop {
            if let Some(line) = self.buffered_line(max) {
                return Ok(line);
            }
            self.flush().await?;
            if self.fill().await? == 0 {
                return Ok(Line::Eof);
            }
        }
    }

    /// A line from the buffer, without I/O.
    fn buffered_line(&mut self, max: usize) -> Option<Line> {
        match self.read.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let line: Vec<u8> = self.read.drain(..=end).collect();
                if std::mem::take(&mut self.discarding) || line.len() > max {
                    Some(Line::TooLong)
                } else {
                    Some(Line::Complete(line))
                }
            }
            None => {
                if self.read.len() > max {
                    // RFC 5321 §4.5.3.1.4: 512 octets for a command line.
                    // Keep memory bounded: forget the line, remember to
                    // skip to its end, answer when it ends.
                    self.discarding = true;
                    self.read.clear();
                }
                None
            }
        }
    }

    /// Reads a DATA body through `decoder`; `None` if the client closed
    /// first. Each read waits at most `timeout` (RFC 5321 §4.5.3.2.6).
    pub async fn read_data(
        &mut self,
        mut decoder: DataDecoder,
        timeout: Duration,
    ) -> io::Result<Option<DataOutcome>> {
        loop {
            let (consumed, outcome) = decoder.feed(&self.read);
            self.read.drain(..consumed);
            if outcome.is_some() {
                return Ok(outcome);
            }
            self.flush().await?;
            let n = tokio::time::timeout(timeout, self.fill())
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads a BDAT chunk of exactly `size` bytes (RFC 3030 §2), handing
    /// them to `sink` as they come; `false` if the client closed first.
    /// Each read waits at most `timeout`.
    pub async fn read_chunk(
        &mut self,
        mut size: u64,
        timeout: Duration,
        mut sink: impl FnMut(&[u8]),
    ) -> io::Result<bool> {
        loop {
            let take = self
                .read
                .len()
                .min(usize::try_from(size).unwrap_or(usize::MAX));
            sink(&self.read[..take]);
            self.read.drain(..take);
            size -= take as u64;
            if size == 0 {
                return Ok(true);
            }
            self.flush().await?;
            let n = tokio::time::timeout(timeout, self.fill())
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Ok(false);
            }
        }
    }

    /// Flushes and gives the stream back, with how many bytes the client
    /// had already sent past the last command. RFC 3207 §4.2 / CVE-2011-0411:
    /// after STARTTLS, those were sent in clear and must be thrown away.
    pub async fn into_stream(mut self) -> io::Result<(S, usize)> {
        self.flush().await?;
        Ok((self.stream, self.read.len()))
    }

    async fn fill(&mut self) -> io::Result<usize> {
        self.read.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.read).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_too_long_lines() {
        let (client, server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(server);
        let mut client = client;
        client
            .write_all(b"NOOP\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\nQUIT\n")
            .await
            .unwrap();
        drop(client);
        assert_eq!(
            conn.read_line(10).await.unwrap(),
            Line::Complete(b"NOOP\r\n".to_vec())
        );
        assert_eq!(conn.read_line(10).await.unwrap(), Line::TooLong);
        assert_eq!(
            conn.read_line(10).await.unwrap(),
            Line::Complete(b"QUIT\n".to_vec())
        );
        assert_eq!(conn.read_line(10).await.unwrap(), Line::Eof);
    }

    #[tokio::test]
    async fn a_long_line_split_over_reads_is_discarded_to_its_end() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(server);
        let writer = tokio::spawn(async move {
            for _ in 0..10 {
                client.write_all(&[b'a'; 100]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.write_all(b"\r\nNOOP\r\n").await.unwrap();
        });
        assert_eq!(conn.read_line(512).await.unwrap(), Line::TooLong);
        assert_eq!(
            conn.read_line(512).await.unwrap(),
            Line::Complete(b"NOOP\r\n".to_vec())
        );
        writer.await.unwrap();
    }
}
