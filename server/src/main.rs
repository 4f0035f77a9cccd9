fn main() {
    eprintln!("poncho-server: the event loop is not built yet (see issue 3)");
    std::process::exit(1);
}
