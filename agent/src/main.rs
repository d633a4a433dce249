fn main() {
    eprintln!("agent: not yet implemented");
    std::process::exit(2)
}
