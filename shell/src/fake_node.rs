//! Tests only: a fake node on loopback that answers each request line of one
//! connection with the next scripted reply (`{req_id}` in it replaced by the
//! request's req_id), then closes, and hands back the lines it read.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

/// The fake node's address, and its thread, which returns the requests.
pub fn fake_node(replies: Vec<String>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&stream);
        let mut seen = Vec::new();
        for reply in replies {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let request: serde_json::Value = serde_json::from_str(&line).unwrap();
            let req_id = request["req_id"].as_u64().unwrap_or(0).to_string();
            let reply = reply.replace("{req_id}", &req_id);
            (&stream)
                .write_all(format!("{reply}\n").as_bytes())
                .unwrap();
            seen.push(line);
        }
        seen
    });
    (addr, handle)
}
