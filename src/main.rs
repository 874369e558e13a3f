fn main() {
    println!("prima-node");
}
