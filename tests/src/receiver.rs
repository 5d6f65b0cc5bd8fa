//! A tiny webhook receiver for the tests (`tests/webhooks.rs`,
//! `tests/two_process.rs`): an HTTP/1.1 server on 127.0.0.1 that answers
//! from a script and records every request before answering it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

/// How long [`Receiver::wait_for`] waits.
pub const WAIT: Duration = Duration::from_secs(30);

/// What the receiver answers to one request.
pub enum Reply {
    Status(u16),
    /// Holds the request until told what to answer (or forever).
    Hold(oneshot::Receiver<u16>),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn envelope(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON envelope")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

struct ReceiverState {
    script: Mutex<VecDeque<Reply>>,
    default_status: AtomicU16,
    seen: watch::Sender<Vec<Received>>,
}

/// A tiny HTTP/1.1 server on 127.0.0.1: one request per connection, scripted
/// answers (then `default_status`), every request recorded before it is
/// answered.
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start(script: Vec<Reply>, default_status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr: SocketAddr = listener.local_addr().expect("receiver address");
        let state = Arc::new(ReceiverState {
            script: Mutex::new(script.into()),
            default_status: AtomicU16::new(default_status),
            seen: watch::channel(Vec::new()).0,
        });
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, s.clone()));
            }
        });
        Receiver {
            url: format!("http://{addr}/hooks/tally"),
            state,
        }
    }

    pub fn set_default(&self, status: u16) {
        self.state.default_status.store(status, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.seen.borrow().clone()
    }

    /// Waits until at least `n` requests came.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut rx = self.state.seen.subscribe();
        let seen = match tokio::time::timeout(WAIT, rx.wait_for(|seen| seen.len() >= n)).await {
            Ok(Ok(seen)) => seen.clone(),
            _ => panic!(
                "the receiver got {} requests, not {n}",
                self.received().len()
            ),
        };
        seen
    }
}

async fn serve(mut stream: tokio::net::TcpStream, state: Arc<ReceiverState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    state
        .seen
        .send_modify(|seen| seen.push(Received { headers, body }));
    let reply = state.script.lock().expect("script").pop_front();
    let status = match reply {
        Some(Reply::Status(s)) => s,
        Some(Reply::Hold(rx)) => rx.await.unwrap_or(200),
        None => state.default_status.load(Ordering::SeqCst),
    };
    let _ = stream
        .write_all(
            format!("HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let _ = stream.shutdown().await;
}
